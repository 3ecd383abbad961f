#pragma once

// The math of every algorithm, once. Each function updates one parameter group
// (lists of tensors of equal length) in place. It checks every list before it
// writes anything, so a call that throws leaves all tensors as they were.
//
// `steps` are the per-parameter step counters *after* this step's increment
// (1 on a parameter's first update), as the reference counts them.

#include <ATen/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace holocron::optim::functional {

using TensorList = c10::ArrayRef<at::Tensor>;
using ScaleClip = std::pair<double, double>;

struct LarsHyper {
  double lr;
  double momentum;
  double dampening;
  double weight_decay;
  bool nesterov;
  // Fix 3: an explicit clip bounds ||p|| in the trust ratio; none keeps it unclamped.
  std::optional<ScaleClip> scale_clip;
};

// `momentum_buffers` is only read when momentum != 0; entries whose
// `buffer_is_new` is true are initialised to this step's direction.
// Returns the trust ratio (local lr) used for each tensor.
std::vector<double> lars_(TensorList params, TensorList grads, TensorList momentum_buffers,
                          c10::ArrayRef<bool> buffer_is_new, const LarsHyper& hyper);

struct LambHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  ScaleClip scale_clip;
};

std::vector<double> lamb_(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, const LambHyper& hyper);

struct RaLarsHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool force_adaptive_momentum;
  ScaleClip scale_clip;
  // Maximum length of the approximated SMA; none: 2 / (1 - beta2) - 1. The
  // reference fixes it in the group on its first step.
  std::optional<double> sma_inf = std::nullopt;
};

std::vector<double> ralars_(TensorList params, TensorList grads, TensorList exp_avgs,
                            TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                            const RaLarsHyper& hyper);

struct TAdamHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool amsgrad;
  std::optional<double> dof;  // none: the parameter's number of elements
};

// `max_exp_avg_sqs` is read only with amsgrad (may be empty otherwise);
// `moment_weights` (the reference's W_t) is read and advanced per parameter.
void tadam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, std::vector<double>& moment_weights,
            c10::ArrayRef<int64_t> steps, const TAdamHyper& hyper);

struct AdaBeliefHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool amsgrad;
};

void adabelief_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                const AdaBeliefHyper& hyper);

struct AdamPHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool amsgrad;
  double delta;
};

void adamp_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& hyper);

struct AdanHyper {
  double lr;
  double beta1;
  double beta2;
  double beta3;
  double eps;
  double weight_decay;
  bool amsgrad;
};

// Fix 1: `prev_grads` is read as the previous step's (decayed) gradient and
// overwritten with this step's; on a parameter's first step (steps[i] == 1)
// the difference term is zero.
void adan_(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
           TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
           c10::ArrayRef<int64_t> steps, const AdanHyper& hyper);

struct AdEMAMixHyper {
  double lr;
  double beta1;
  double beta2;
  double beta3;
  double alpha;
  double eps;
  double weight_decay;
};

void ademamix_(TensorList params, TensorList grads, TensorList exp_avgs,
               TensorList exp_avgs_slow, TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const AdEMAMixHyper& hyper);

// Lookahead / Scout synchronisation: slow += rate * (fast - slow); fast = slow.
void lookahead_sync_(TensorList fast, TensorList slow, double sync_rate);

// Scout keeps, per element, running statistics of the per-step changes
// u = fast - prev over the current period (Welford mean and M2, max, min), so
// its memory does not grow with the period. `count` is the number of changes
// already folded in before this call.
struct ScoutStats {
  TensorList prev;
  TensorList mean;
  TensorList m2;
  TensorList max;
  TensorList min;
};
void scout_accumulate_(TensorList fast, const ScoutStats& stats, int64_t count);

// Mean over parameters of the mean over elements of std(u) / max|u - mean(u)|
// (std unbiased over the `count` changes). Fix 5: elements where that ratio is
// not a number are left out, and a parameter with none left does not count;
// with nothing left at all the coherence is 0.
double scout_coherence(const ScoutStats& stats, int64_t count);

}  // namespace holocron::optim::functional

namespace holocron::optim::functional {

// Which implementation runs the updates of CPU tensors. The functional entry
// points use fused, vectorized, multithreaded kernels for CPU tensors of
// float, double, bfloat16 or half whose state is dense with the parameter's
// strides, and the reference backend (ATen ops: any device, any strides)
// otherwise. The fused kernels are built for several instruction sets and the
// best one this CPU runs is chosen at load time; the environment variable
// HOLOCRON_OPTIM_CPU_CAPABILITY (auto, avx512, avx2, default, reference)
// caps it for a process, as ATEN_CPU_CAPABILITY does for ATen.
//   cpu_capability(): "avx512", "avx2", "default" (portable) or "reference".
//   set_cpu_capability(name): also "auto"; throws c10::ValueError for a name
//     this CPU cannot run. Process-wide: meant for tests and benchmarks.
//   available_cpu_capabilities(): "reference" and the builds this CPU runs.
// Every build gives bitwise the same results, for any thread count.
std::string cpu_capability();
void set_cpu_capability(const std::string& name);
std::vector<std::string> available_cpu_capabilities();

// Hyper-parameter checks (c10::ValueError naming the argument and its value).
// Every update function runs its check first, also on empty lists, so the
// fronts validate options by calling the update with no tensors.
void check(const LarsHyper& hyper);
void check(const LambHyper& hyper);
void check(const RaLarsHyper& hyper);
void check(const TAdamHyper& hyper);
void check(const AdaBeliefHyper& hyper);
void check(const AdamPHyper& hyper);
void check(const AdanHyper& hyper);
void check(const AdEMAMixHyper& hyper);

}  // namespace holocron::optim::functional
