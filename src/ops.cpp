// The functional layer as PyTorch operators (torch.ops.holocron.*), one call
// per parameter group. Python reaches the same C++ math as the C++ classes.

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>

#include "functional/common.h"
#include "holocron/optim/functional.h"

namespace holocron::optim::ops {

namespace {

namespace F = functional;
using at::TensorList;

F::ScaleClip clip_of(double low, double high) { return {low, high}; }

using OptionalTensor = std::optional<at::Tensor>;
using OptionalTensors = std::optional<TensorList>;
using OptionalNames = std::optional<std::vector<std::string>>;

// One-element CPU tensors are read and written in place: a dispatched
// item()/fill_() per parameter would cost more than the update of a small one.
template <typename F>
bool with_cpu_scalar(const at::Tensor& t, F f) {
  if (!t.device().is_cpu()) return false;
  switch (t.scalar_type()) {
    case at::kFloat: f(t.data_ptr<float>()); return true;
    case at::kDouble: f(t.data_ptr<double>()); return true;
    case at::kLong: f(t.data_ptr<int64_t>()); return true;
    case at::kBFloat16: f(t.data_ptr<at::BFloat16>()); return true;
    case at::kHalf: f(t.data_ptr<at::Half>()); return true;
    default: return false;
  }
}

double read_scalar(const at::Tensor& t) {
  double value = 0.0;
  if (with_cpu_scalar(t, [&](auto* ptr) { value = static_cast<double>(*ptr); })) return value;
  return t.item<double>();
}

void write_scalar(const at::Tensor& t, double value) {
  if (t.is_inference() || !with_cpu_scalar(t, [&](auto* ptr) {
        using T = std::remove_pointer_t<decltype(ptr)>;
        *ptr = static_cast<T>(value);
      })) {
    t.fill_(value);
    return;
  }
  t.unsafeGetTensorImpl()->bump_version();
}

// Per-tensor trust ratios, on the parameters' device: torch.compile's fake
// kernels put a new tensor where the inputs are.
at::Tensor as_tensor(const std::vector<double>& values, TensorList params) {
  auto out = at::tensor(c10::ArrayRef<double>(values), at::TensorOptions().dtype(at::kDouble));
  return params.empty() ? out : out.to(params[0].device());
}

F::GradScaling scaling_of(const OptionalTensor& grad_scale, const OptionalTensor& found_inf) {
  return {grad_scale.value_or(at::Tensor()), found_inf.value_or(at::Tensor())};
}

bool skipped(const OptionalTensor& found_inf) {
  return found_inf && found_inf->defined() && read_scalar(*found_inf) != 0.0;
}

// Shards of DTensors (FSDP2): the partial sums are all-reduced over each named
// process group (torch.distributed's group_name) in turn, on the tensors' device
// (NCCL takes CUDA tensors only).
F::Sharding sharding_of(TensorList params, at::OptionalIntArrayRef numels,
                        const OptionalNames& shard_groups) {
  F::Sharding sharding;
  if (numels) sharding.numels.assign(numels->begin(), numels->end());
  if (!shard_groups || shard_groups->empty()) return sharding;
  const auto device = params.empty() ? at::Device(at::kCPU) : params[0].device();
  sharding.all_reduce = [device, groups = *shard_groups](at::Tensor& sums) {
    std::vector<at::Tensor> buffer{sums.to(device)};
    for (const auto& name : groups) {
      c10d::resolve_process_group(name)->allreduce(buffer)->wait();
    }
    sums = buffer[0].to(at::kCPU);
  };
  return sharding;
}

// Step counters as ints (the reference's state), or as one-element tensors
// (a compiled step's state: torch.compile would recompile for every new int).
// Tensors are read here and advanced by `store` once the update has run,
// unless found_inf skipped it.
class StepCounters {
 public:
  StepCounters(const char* optimizer, c10::IntArrayRef steps, const OptionalTensors& counters,
               size_t n)
      : counters_(counters) {
    if (!counters_) {
      steps_.assign(steps.begin(), steps.end());
      return;
    }
    TORCH_CHECK(steps.empty(), optimizer, ": pass the step counters as ints or as tensors, not both");
    TORCH_CHECK(counters_->size() == n, optimizer, ": got ", counters_->size(),
                " step tensors for ", n, " parameters");
    for (const auto& t : *counters_) {
      TORCH_CHECK(t.numel() == 1, optimizer, ": a step tensor has shape ", t.sizes(),
                  "; expected one element");
      steps_.push_back(static_cast<int64_t>(read_scalar(t)) + 1);
    }
  }
  c10::IntArrayRef steps() const { return steps_; }
  void store(const OptionalTensor& found_inf) const {
    if (!counters_ || skipped(found_inf)) return;
    for (size_t i = 0; i < steps_.size(); ++i) {
      write_scalar((*counters_)[i], static_cast<double>(steps_[i]));
    }
  }

 private:
  OptionalTensors counters_;
  std::vector<int64_t> steps_;
};

// LAMB's and RaLars' trust ratios go into one-element tensors, when given:
// checked before the update, written after it.
void check_ratio_targets(const char* optimizer, const OptionalTensors& targets, size_t n) {
  if (!targets) return;
  TORCH_CHECK(targets->size() == n, optimizer, ": got ", targets->size(), " local_lr tensors for ",
              n, " parameters");
  for (const auto& t : *targets) {
    TORCH_CHECK(t.numel() == 1, optimizer, ": a local_lr tensor has shape ", t.sizes(),
                "; expected one element");
  }
}

void store_ratios(const OptionalTensors& targets, const std::vector<double>& ratios) {
  if (!targets || ratios.empty()) return;  // empty: found_inf skipped the step
  for (size_t i = 0; i < ratios.size(); ++i) write_scalar((*targets)[i], ratios[i]);
}

// What the ops return: the trust ratios, or ones for a skipped step (what the
// fake kernels promise: one per tensor).
at::Tensor ratios_out(const std::vector<double>& ratios, TensorList params) {
  return as_tensor(ratios.empty() ? std::vector<double>(params.size(), 1.0) : ratios, params);
}

at::Tensor lars(TensorList params, TensorList grads, TensorList momentum_buffers,
                const c10::List<bool>& buffer_is_new, double lr, double momentum, double dampening,
                double weight_decay, bool nesterov, c10::ArrayRef<double> scale_clip,
                const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
                at::OptionalIntArrayRef numels, const OptionalNames& shard_groups) {
  TORCH_CHECK_VALUE(scale_clip.empty() || scale_clip.size() == 2,
                    "LARS: scale_clip must hold two values (low, high), got ", scale_clip.size());
  std::optional<F::ScaleClip> clip;
  if (!scale_clip.empty()) clip = clip_of(scale_clip[0], scale_clip[1]);
  std::unique_ptr<bool[]> flags(new bool[buffer_is_new.size()]());
  for (size_t i = 0; i < buffer_is_new.size(); ++i) flags[i] = buffer_is_new.get(i);
  return ratios_out(F::lars_(params, grads, momentum_buffers,
                            c10::ArrayRef<bool>(flags.get(), buffer_is_new.size()),
                            {lr, momentum, dampening, weight_decay, nesterov, clip},
                            scaling_of(grad_scale, found_inf),
                            sharding_of(params, numels, shard_groups)),
                    params);
}

at::Tensor lamb(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                double clip_low, double clip_high, const OptionalTensor& grad_scale,
                const OptionalTensor& found_inf, at::OptionalIntArrayRef numels,
                const OptionalNames& shard_groups, const OptionalTensors& step_tensors,
                const OptionalTensors& local_lrs) {
  // LAMB has no bias correction: its counters are only advanced.
  const StepCounters counters("LAMB", {}, step_tensors, params.size());
  check_ratio_targets("LAMB", local_lrs, params.size());
  const auto ratios = F::lamb_(params, grads, exp_avgs, exp_avg_sqs,
                               {lr, beta1, beta2, eps, weight_decay, clip_of(clip_low, clip_high)},
                               scaling_of(grad_scale, found_inf),
                               sharding_of(params, numels, shard_groups));
  store_ratios(local_lrs, ratios);
  counters.store(found_inf);
  return ratios_out(ratios, params);
}

at::Tensor ralars(TensorList params, TensorList grads, TensorList exp_avgs,
                  TensorList exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
                  double beta2, double eps, double weight_decay, bool force_adaptive_momentum,
                  double clip_low, double clip_high, std::optional<double> sma_inf,
                  const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
                  at::OptionalIntArrayRef numels, const OptionalNames& shard_groups,
                  const OptionalTensors& step_tensors, const OptionalTensors& local_lrs) {
  const StepCounters counters("RaLars", steps, step_tensors, params.size());
  check_ratio_targets("RaLars", local_lrs, params.size());
  const auto ratios = F::ralars_(params, grads, exp_avgs, exp_avg_sqs, counters.steps(),
                                 {lr, beta1, beta2, eps, weight_decay, force_adaptive_momentum,
                                  clip_of(clip_low, clip_high), sma_inf},
                                 scaling_of(grad_scale, found_inf),
                                 sharding_of(params, numels, shard_groups));
  store_ratios(local_lrs, ratios);
  counters.store(found_inf);
  return ratios_out(ratios, params);
}

// Stores values[i] into the one-element tensor targets[i] (LAMB's and RaLars'
// trust ratios, kept in state as 0-d tensors): updated in place, so a step
// makes no new tensor per parameter.
void write_scalars(TensorList targets, c10::ArrayRef<double> values) {
  TORCH_CHECK(targets.size() == values.size(), "write_scalars_: got ", values.size(),
              " values for ", targets.size(), " tensors");
  for (const auto& t : targets) {
    TORCH_CHECK(t.numel() == 1, "write_scalars_: a target has shape ", t.sizes(),
                "; expected one element");
  }
  for (size_t i = 0; i < targets.size(); ++i) write_scalar(targets[i], values[i]);
}

// The reference keeps TAdam's moment weight as a one-element tensor (W_t).
void tadam(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, TensorList W_ts, c10::IntArrayRef steps, double lr,
           double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
           std::optional<double> dof, const OptionalTensor& grad_scale,
           const OptionalTensor& found_inf, at::OptionalIntArrayRef numels,
           const OptionalNames& shard_groups, const OptionalTensors& step_tensors) {
  TORCH_CHECK(W_ts.size() == params.size(), "TAdam: got ", W_ts.size(), " W_t for ",
              params.size(), " parameters");
  std::vector<double> weights(W_ts.size());
  for (size_t i = 0; i < W_ts.size(); ++i) {
    TORCH_CHECK(W_ts[i].numel() == 1, "TAdam: W_t of parameter ", i,
                " must hold one element, it has shape ", W_ts[i].sizes());
    TORCH_CHECK(W_ts[i].scalar_type() == params[i].scalar_type() &&
                    W_ts[i].device() == params[i].device(),
                "TAdam: state 'W_t' of parameter ", i, " must be a one-element tensor of dtype ",
                params[i].scalar_type(), " on ", params[i].device(), ", got ",
                W_ts[i].scalar_type(), " on ", W_ts[i].device());
    weights[i] = read_scalar(W_ts[i]);
  }
  const StepCounters counters("TAdam", steps, step_tensors, params.size());
  F::tadam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, weights, counters.steps(),
            {lr, beta1, beta2, eps, weight_decay, amsgrad, dof}, scaling_of(grad_scale, found_inf),
            sharding_of(params, numels, shard_groups));
  for (size_t i = 0; i < W_ts.size(); ++i) write_scalar(W_ts[i], weights[i]);
  counters.store(found_inf);
}

void adabelief(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList max_exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
               double beta2, double eps, double weight_decay, bool amsgrad,
               const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
               const OptionalTensors& step_tensors) {
  const StepCounters counters("AdaBelief", steps, step_tensors, params.size());
  F::adabelief_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, counters.steps(),
                {lr, beta1, beta2, eps, weight_decay, amsgrad}, scaling_of(grad_scale, found_inf));
  counters.store(found_inf);
}

void adamp(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
           double beta2, double eps, double weight_decay, bool amsgrad, double delta,
           const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
           at::OptionalIntArrayRef numels, const OptionalNames& shard_groups,
           const OptionalTensors& step_tensors) {
  const StepCounters counters("AdamP", steps, step_tensors, params.size());
  F::adamp_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, counters.steps(),
            {lr, beta1, beta2, eps, weight_decay, amsgrad, delta}, scaling_of(grad_scale, found_inf),
            sharding_of(params, numels, shard_groups));
  counters.store(found_inf);
}

void adan(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
          TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
          c10::IntArrayRef steps, double lr, double beta1, double beta2, double beta3, double eps,
          double weight_decay, bool amsgrad, const OptionalTensor& grad_scale,
          const OptionalTensor& found_inf, const OptionalTensors& step_tensors) {
  const StepCounters counters("Adan", steps, step_tensors, params.size());
  F::adan_(params, grads, prev_grads, exp_avgs, exp_avg_sqs, exp_avg_deltas, max_exp_avg_deltas,
           counters.steps(), {lr, beta1, beta2, beta3, eps, weight_decay, amsgrad},
           scaling_of(grad_scale, found_inf));
  counters.store(found_inf);
}

void ademamix(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avgs_slow,
              TensorList exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
              double beta2, double beta3, double alpha, double eps, double weight_decay,
              const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
              const OptionalTensors& step_tensors) {
  const StepCounters counters("AdEMAMix", steps, step_tensors, params.size());
  F::ademamix_(params, grads, exp_avgs, exp_avgs_slow, exp_avg_sqs, counters.steps(),
               {lr, beta1, beta2, beta3, alpha, eps, weight_decay},
               scaling_of(grad_scale, found_inf));
  counters.store(found_inf);
}

// What every update op checks before it writes, for one group, so that a
// step over several groups can check them all before updating any.
void validate_group(const std::string& optimizer, TensorList params, TensorList grads,
                    TensorList buffers, c10::IntArrayRef owners, c10::IntArrayRef steps) {
  F::detail::check_group(optimizer.c_str(), params, grads, {});
  F::detail::check_flat_state(optimizer.c_str(), params, buffers, owners);
  for (int64_t step : steps) {
    TORCH_CHECK(step >= 1, optimizer, ": a state 'step' is ", step - 1,
                "; counters cannot be negative");
  }
}

void lookahead_sync(TensorList fast, TensorList slow, double sync_rate) {
  F::lookahead_sync_(fast, slow, sync_rate);
}

void scout_accumulate(TensorList fast, TensorList prev, TensorList mean, TensorList m2,
                      TensorList max, TensorList min, int64_t count) {
  F::scout_accumulate_(fast, {prev, mean, m2, max, min}, count);
}

double scout_coherence(TensorList prev, TensorList mean, TensorList m2, TensorList max,
                       TensorList min, int64_t count, const OptionalNames& shard_groups) {
  return F::scout_coherence({prev, mean, m2, max, min}, count,
                            sharding_of(prev, std::nullopt, shard_groups));
}

// The wrappers' bookkeeping after the base optimizer's step, with the counter
// (and Scout's last rate) in tensors and every decision here: a compiled step
// then has no branch on Python values. Nothing moves when found_inf is set.
int64_t advanced_counter(const at::Tensor& fast_steps, int64_t sync_period) {
  TORCH_CHECK_VALUE(sync_period >= 1, "Invalid sync_period: ", sync_period);
  TORCH_CHECK(fast_steps.numel() == 1, "fast_steps must hold one element, it has shape ",
              fast_steps.sizes());
  return static_cast<int64_t>(read_scalar(fast_steps)) + 1;
}

void lookahead_step(TensorList fast, TensorList slow, const at::Tensor& fast_steps,
                    int64_t sync_period, double sync_rate, const OptionalTensor& found_inf) {
  const int64_t count = advanced_counter(fast_steps, sync_period);
  if (skipped(found_inf)) return;
  if (count % sync_period == 0) F::lookahead_sync_(fast, slow, sync_rate);
  write_scalar(fast_steps, static_cast<double>(count));
}

void scout_step(TensorList fast, TensorList slow, TensorList prev, TensorList mean, TensorList m2,
                TensorList max, TensorList min, const at::Tensor& fast_steps,
                const at::Tensor& last_sync_rate, int64_t sync_period, double sync_rate,
                const OptionalTensor& found_inf, const OptionalNames& shard_groups) {
  const int64_t count = advanced_counter(fast_steps, sync_period);
  if (skipped(found_inf)) return;
  const F::ScoutStats stats{prev, mean, m2, max, min};
  const int64_t changes_before = (count - 1) % sync_period;
  F::scout_accumulate_(fast, stats, changes_before);
  if (count % sync_period == 0) {
    const double coherence =
        F::scout_coherence(stats, changes_before + 1, sharding_of(prev, std::nullopt, shard_groups));
    const double rate = std::max(1.0 - coherence, sync_rate);
    F::lookahead_sync_(fast, slow, rate);
    write_scalar(last_sync_rate, rate);
    // The next period's changes start from the synchronised weights.
    for (size_t i = 0; i < fast.size(); ++i) prev[i].copy_(fast[i]);
  }
  write_scalar(fast_steps, static_cast<double>(count));
}

}  // namespace

TORCH_LIBRARY(holocron, m) {
  m.def(
      "lars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "bool[] buffer_is_new, float lr, float momentum, float dampening, float weight_decay, "
      "bool nesterov, float[] scale_clip, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None) -> Tensor");
  m.def(
      "lamb_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, float clip_low, float clip_high, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None, "
      "Tensor(s!)[]? step_tensors=None, Tensor(l!)[]? local_lrs=None) -> Tensor");
  m.def(
      "ralars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, int[] steps, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool force_adaptive_momentum, float clip_low, float clip_high, "
      "float? sma_inf=None, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None, "
      "Tensor(s!)[]? step_tensors=None, Tensor(l!)[]? local_lrs=None) -> Tensor");
  m.def(
      "tadam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] W_ts, int[] steps, "
      "float lr, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, "
      "float? dof, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None, "
      "Tensor(s!)[]? step_tensors=None) -> ()");
  m.def(
      "adabelief_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(s!)[]? step_tensors=None) -> ()");
  m.def(
      "adamp_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, float delta, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None, "
      "Tensor(s!)[]? step_tensors=None) -> ()");
  m.def(
      "adan_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] prev_grads, "
      "Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] exp_avg_deltas, "
      "Tensor(f!)[] max_exp_avg_deltas, int[] steps, float lr, float beta1, float beta2, "
      "float beta3, float eps, float weight_decay, bool amsgrad, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(s!)[]? step_tensors=None) -> ()");
  m.def(
      "ademamix_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avgs_slow, Tensor(d!)[] exp_avg_sqs, int[] steps, float lr, float beta1, "
      "float beta2, float beta3, float alpha, float eps, float weight_decay, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(s!)[]? step_tensors=None) -> ()");
  m.def(
      "validate_group(str optimizer, Tensor[] params, Tensor[] grads, Tensor[] buffers, "
      "int[] owners, int[] steps) -> ()");
  m.def("write_scalars_(Tensor(a!)[] targets, float[] values) -> ()");
  m.def("lookahead_sync_(Tensor(a!)[] fast, Tensor(b!)[] slow, float sync_rate) -> ()");
  m.def(
      "lookahead_step_(Tensor(a!)[] fast, Tensor(b!)[] slow, Tensor(c!) fast_steps, "
      "int sync_period, float sync_rate, Tensor? found_inf=None) -> ()");
  m.def(
      "scout_step_(Tensor(a!)[] fast, Tensor(b!)[] slow, Tensor(c!)[] prev, Tensor(d!)[] mean, "
      "Tensor(e!)[] m2, Tensor(f!)[] max, Tensor(g!)[] min, Tensor(h!) fast_steps, "
      "Tensor(i!) last_sync_rate, int sync_period, float sync_rate, Tensor? found_inf=None, "
      "str[]? shard_groups=None) -> ()");
  m.def(
      "scout_accumulate_(Tensor[] fast, Tensor(a!)[] prev, Tensor(b!)[] mean, Tensor(c!)[] m2, "
      "Tensor(d!)[] max, Tensor(e!)[] min, int count) -> ()");
  // Which CPU kernels run the updates (see functional.h): for tests and benchmarks.
  m.def("cpu_capability() -> str", [] { return F::cpu_capability(); });
  m.def("set_cpu_capability(str name) -> ()",
        [](const std::string& name) { F::set_cpu_capability(name); });
  m.def("available_cpu_capabilities() -> str[]", [] { return F::available_cpu_capabilities(); });
  m.def(
      "scout_coherence(Tensor[] prev, Tensor[] mean, Tensor[] m2, Tensor[] max, Tensor[] min, "
      "int count, str[]? shard_groups=None) -> float");
}

// The functional layer is written with ATen ops, so one kernel serves every device.
TORCH_LIBRARY_IMPL(holocron, CompositeExplicitAutograd, m) {
  m.impl("lars_", &lars);
  m.impl("lamb_", &lamb);
  m.impl("ralars_", &ralars);
  m.impl("tadam_", &tadam);
  m.impl("adabelief_", &adabelief);
  m.impl("adamp_", &adamp);
  m.impl("adan_", &adan);
  m.impl("ademamix_", &ademamix);
  m.impl("validate_group", &validate_group);
  m.impl("write_scalars_", &write_scalars);
  m.impl("lookahead_sync_", &lookahead_sync);
  m.impl("scout_accumulate_", &scout_accumulate);
  m.impl("scout_coherence", &scout_coherence);
  m.impl("lookahead_step_", &lookahead_step);
  m.impl("scout_step_", &scout_step);
}

// Meta kernels: shapes never change and nothing is returned but per-tensor
// scalars, so fake-tensor tracing (torch.compile, opcheck) needs no math.
namespace {

template <typename... Args>
void no_op(Args...) {}

at::Tensor unit_ratios(TensorList params) {
  return at::empty({static_cast<int64_t>(params.size())},
                   at::TensorOptions().dtype(at::kDouble).device(at::kMeta));
}

}  // namespace

TORCH_LIBRARY_IMPL(holocron, Meta, m) {
  m.impl("lars_", [](TensorList params, TensorList, TensorList, const c10::List<bool>&, double,
                     double, double, double, bool, c10::ArrayRef<double>, const OptionalTensor&,
                     const OptionalTensor&, at::OptionalIntArrayRef,
                     const OptionalNames&) { return unit_ratios(params); });
  m.impl("lamb_", [](TensorList params, TensorList, TensorList, TensorList, double, double, double,
                     double, double, double, double, const OptionalTensor&, const OptionalTensor&,
                     at::OptionalIntArrayRef, const OptionalNames&, const OptionalTensors&,
                     const OptionalTensors&) { return unit_ratios(params); });
  m.impl("ralars_", [](TensorList params, TensorList, TensorList, TensorList, c10::IntArrayRef,
                       double, double, double, double, double, bool, double, double,
                       std::optional<double>, const OptionalTensor&, const OptionalTensor&,
                       at::OptionalIntArrayRef, const OptionalNames&, const OptionalTensors&,
                       const OptionalTensors&) { return unit_ratios(params); });
  m.impl("tadam_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList, TensorList,
                          c10::IntArrayRef, double, double, double, double, double, bool,
                          std::optional<double>, const OptionalTensor&, const OptionalTensor&,
                          at::OptionalIntArrayRef, const OptionalNames&, const OptionalTensors&>);
  m.impl("adabelief_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                              c10::IntArrayRef, double, double, double, double, double, bool,
                              const OptionalTensor&, const OptionalTensor&, const OptionalTensors&>);
  m.impl("adamp_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                          c10::IntArrayRef, double, double, double, double, double, bool, double,
                          const OptionalTensor&, const OptionalTensor&, at::OptionalIntArrayRef,
                          const OptionalNames&, const OptionalTensors&>);
  m.impl("adan_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList, TensorList,
                         TensorList, c10::IntArrayRef, double, double, double, double, double,
                         double, bool, const OptionalTensor&, const OptionalTensor&,
                         const OptionalTensors&>);
  m.impl("ademamix_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                             c10::IntArrayRef, double, double, double, double, double, double,
                             double, const OptionalTensor&, const OptionalTensor&,
                             const OptionalTensors&>);
  m.impl("validate_group", [](const std::string&, TensorList, TensorList, TensorList,
                              c10::IntArrayRef, c10::IntArrayRef) {});
  m.impl("write_scalars_", &no_op<TensorList, c10::ArrayRef<double>>);
  m.impl("lookahead_sync_", &no_op<TensorList, TensorList, double>);
  m.impl("scout_accumulate_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                                     TensorList, int64_t>);
  // A float output cannot be faked (tracing would fold in this 0): compiled
  // steps use scout_step_, which keeps the coherence inside.
  m.impl("scout_coherence", [](TensorList, TensorList, TensorList, TensorList, TensorList,
                               int64_t, const OptionalNames&) { return 0.0; });
  m.impl("lookahead_step_", &no_op<TensorList, TensorList, const at::Tensor&, int64_t, double,
                                   const OptionalTensor&>);
  m.impl("scout_step_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                               TensorList, TensorList, const at::Tensor&, const at::Tensor&,
                               int64_t, double, const OptionalTensor&, const OptionalNames&>);
}

}  // namespace holocron::optim::ops
