// The functional layer as PyTorch operators (torch.ops.holocron.*), one call
// per parameter group. Python reaches the same C++ math as the C++ classes.

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/library.h>

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

// Per-tensor trust ratios come back as a new float64 tensor: torch.compile's
// functionalization accepts mutable operators that return fresh tensors, not lists of floats.
at::Tensor as_tensor(const std::vector<double>& values) {
  return at::tensor(c10::ArrayRef<double>(values), at::TensorOptions().dtype(at::kDouble));
}

F::GradScaling scaling_of(const std::optional<at::Tensor>& grad_scale,
                          const std::optional<at::Tensor>& found_inf) {
  return {grad_scale.value_or(at::Tensor()), found_inf.value_or(at::Tensor())};
}

// Shards of DTensors (FSDP2): the partial sums are all-reduced over each named
// process group (torch.distributed's group_name) in turn, on the tensors' device
// (NCCL takes CUDA tensors only).
F::Sharding sharding_of(TensorList params, at::OptionalIntArrayRef numels,
                        const std::optional<std::vector<std::string>>& shard_groups) {
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

at::Tensor lars(TensorList params, TensorList grads, TensorList momentum_buffers,
                         const c10::List<bool>& buffer_is_new, double lr, double momentum,
                         double dampening, double weight_decay, bool nesterov,
                         c10::ArrayRef<double> scale_clip,
                const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    at::OptionalIntArrayRef numels, const std::optional<std::vector<std::string>>& shard_groups) {
  TORCH_CHECK_VALUE(scale_clip.empty() || scale_clip.size() == 2,
                    "LARS: scale_clip must hold two values (low, high), got ", scale_clip.size());
  std::optional<F::ScaleClip> clip;
  if (!scale_clip.empty()) clip = clip_of(scale_clip[0], scale_clip[1]);
  std::unique_ptr<bool[]> flags(new bool[buffer_is_new.size()]());
  for (size_t i = 0; i < buffer_is_new.size(); ++i) flags[i] = buffer_is_new.get(i);
  return as_tensor(F::lars_(params, grads, momentum_buffers,
                            c10::ArrayRef<bool>(flags.get(), buffer_is_new.size()),
                            {lr, momentum, dampening, weight_decay, nesterov, clip},
      scaling_of(grad_scale, found_inf), sharding_of(params, numels, shard_groups)));
}

at::Tensor lamb(TensorList params, TensorList grads, TensorList exp_avgs,
                         TensorList exp_avg_sqs, double lr, double beta1, double beta2, double eps,
                         double weight_decay, double clip_low, double clip_high,
                const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    at::OptionalIntArrayRef numels, const std::optional<std::vector<std::string>>& shard_groups) {
  return as_tensor(F::lamb_(params, grads, exp_avgs, exp_avg_sqs,
                            {lr, beta1, beta2, eps, weight_decay, clip_of(clip_low, clip_high)},
      scaling_of(grad_scale, found_inf), sharding_of(params, numels, shard_groups)));
}

at::Tensor ralars(TensorList params, TensorList grads, TensorList exp_avgs,
                           TensorList exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
                           double beta2, double eps, double weight_decay,
                           bool force_adaptive_momentum, double clip_low, double clip_high,
                           std::optional<double> sma_inf,
                  const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    at::OptionalIntArrayRef numels, const std::optional<std::vector<std::string>>& shard_groups) {
  return as_tensor(F::ralars_(params, grads, exp_avgs, exp_avg_sqs, steps,
                              {lr, beta1, beta2, eps, weight_decay, force_adaptive_momentum,
                               clip_of(clip_low, clip_high), sma_inf},
      scaling_of(grad_scale, found_inf), sharding_of(params, numels, shard_groups)));
}

// One-element CPU tensors are read and written in place: a dispatched
// item()/fill_() per parameter would cost more than the update of a small one.
template <typename F>
bool with_cpu_scalar(const at::Tensor& t, F f) {
  if (!t.device().is_cpu()) return false;
  switch (t.scalar_type()) {
    case at::kFloat: f(t.data_ptr<float>()); return true;
    case at::kDouble: f(t.data_ptr<double>()); return true;
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
           std::optional<double> dof,
           const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    at::OptionalIntArrayRef numels, const std::optional<std::vector<std::string>>& shard_groups) {
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
  F::tadam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, weights, steps,
            {lr, beta1, beta2, eps, weight_decay, amsgrad, dof},
      scaling_of(grad_scale, found_inf), sharding_of(params, numels, shard_groups));
  for (size_t i = 0; i < W_ts.size(); ++i) write_scalar(W_ts[i], weights[i]);
}

void adabelief(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList max_exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
               double beta2, double eps, double weight_decay, bool amsgrad,
               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  F::adabelief_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                {lr, beta1, beta2, eps, weight_decay, amsgrad},
      scaling_of(grad_scale, found_inf));
}

void adamp(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
           double beta2, double eps, double weight_decay, bool amsgrad, double delta,
           const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    at::OptionalIntArrayRef numels, const std::optional<std::vector<std::string>>& shard_groups) {
  F::adamp_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
            {lr, beta1, beta2, eps, weight_decay, amsgrad, delta},
      scaling_of(grad_scale, found_inf), sharding_of(params, numels, shard_groups));
}

void adan(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
          TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
          c10::IntArrayRef steps, double lr, double beta1, double beta2, double beta3, double eps,
          double weight_decay, bool amsgrad,
          const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  F::adan_(params, grads, prev_grads, exp_avgs, exp_avg_sqs, exp_avg_deltas, max_exp_avg_deltas,
           steps, {lr, beta1, beta2, beta3, eps, weight_decay, amsgrad},
      scaling_of(grad_scale, found_inf));
}

void ademamix(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avgs_slow,
              TensorList exp_avg_sqs, c10::IntArrayRef steps, double lr, double beta1,
              double beta2, double beta3, double alpha, double eps, double weight_decay,
              const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  F::ademamix_(params, grads, exp_avgs, exp_avgs_slow, exp_avg_sqs, steps,
               {lr, beta1, beta2, beta3, alpha, eps, weight_decay},
      scaling_of(grad_scale, found_inf));
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
                       TensorList min, int64_t count, const std::optional<std::vector<std::string>>& shard_groups) {
  return F::scout_coherence({prev, mean, m2, max, min}, count,
                            sharding_of(prev, std::nullopt, shard_groups));
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
      "str[]? shard_groups=None) -> Tensor");
  m.def(
      "ralars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, int[] steps, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool force_adaptive_momentum, float clip_low, float clip_high, "
      "float? sma_inf=None, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None) -> Tensor");
  m.def(
      "tadam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] W_ts, int[] steps, "
      "float lr, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, "
      "float? dof, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None) -> ()");
  m.def(
      "adabelief_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "adamp_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, float delta, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, int[]? numels=None, "
      "str[]? shard_groups=None) -> ()");
  m.def(
      "adan_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] prev_grads, "
      "Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] exp_avg_deltas, "
      "Tensor(f!)[] max_exp_avg_deltas, int[] steps, float lr, float beta1, float beta2, "
      "float beta3, float eps, float weight_decay, bool amsgrad, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "ademamix_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avgs_slow, Tensor(d!)[] exp_avg_sqs, int[] steps, float lr, float beta1, "
      "float beta2, float beta3, float alpha, float eps, float weight_decay, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "validate_group(str optimizer, Tensor[] params, Tensor[] grads, Tensor[] buffers, "
      "int[] owners, int[] steps) -> ()");
  m.def("write_scalars_(Tensor(a!)[] targets, float[] values) -> ()");
  m.def("lookahead_sync_(Tensor(a!)[] fast, Tensor(b!)[] slow, float sync_rate) -> ()");
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
                     double, double, double, bool, c10::ArrayRef<double>, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::OptionalIntArrayRef, const std::optional<std::vector<std::string>>&) { return unit_ratios(params); });
  m.impl("lamb_", [](TensorList params, TensorList, TensorList, TensorList, double, double, double,
                     double, double, double, double, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::OptionalIntArrayRef, const std::optional<std::vector<std::string>>&) { return unit_ratios(params); });
  m.impl("ralars_", [](TensorList params, TensorList, TensorList, TensorList, c10::IntArrayRef,
                       double, double, double, double, double, bool, double, double,
                       std::optional<double>, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::OptionalIntArrayRef, const std::optional<std::vector<std::string>>&) { return unit_ratios(params); });
  m.impl("tadam_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList, TensorList,
                          c10::IntArrayRef, double, double, double, double, double, bool,
                          std::optional<double>,
                          const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::OptionalIntArrayRef, const std::optional<std::vector<std::string>>&>);
  m.impl("adabelief_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                              c10::IntArrayRef, double, double, double, double, double, bool,
                          const std::optional<at::Tensor>&, const std::optional<at::Tensor>&>);
  m.impl("adamp_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                          c10::IntArrayRef, double, double, double, double, double, bool, double,
                          const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::OptionalIntArrayRef, const std::optional<std::vector<std::string>>&>);
  m.impl("adan_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList, TensorList,
                         TensorList, c10::IntArrayRef, double, double, double, double, double,
                         double, bool,
                          const std::optional<at::Tensor>&, const std::optional<at::Tensor>&>);
  m.impl("ademamix_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                             c10::IntArrayRef, double, double, double, double, double, double,
                             double,
                          const std::optional<at::Tensor>&, const std::optional<at::Tensor>&>);
  m.impl("validate_group", [](const std::string&, TensorList, TensorList, TensorList,
                              c10::IntArrayRef, c10::IntArrayRef) {});
  m.impl("write_scalars_", &no_op<TensorList, c10::ArrayRef<double>>);
  m.impl("lookahead_sync_", &no_op<TensorList, TensorList, double>);
  m.impl("scout_accumulate_", &no_op<TensorList, TensorList, TensorList, TensorList, TensorList,
                                     TensorList, int64_t>);
  m.impl("scout_coherence", [](TensorList, TensorList, TensorList, TensorList, TensorList,
                               int64_t, const std::optional<std::vector<std::string>>&) { return 0.0; });
}

}  // namespace holocron::optim::ops
