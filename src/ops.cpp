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
using OptionalTensors = std::optional<std::vector<at::Tensor>>;
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

// ---- Arguments by name ---------------------------------------------------
//
// Each op is declared once, by its schema (kOps below): the kernels read their
// arguments from the boxed stack by the schema's names, and one Meta kernel
// serves every op, so that an argument is named in two places (the schema and
// the line that reads it) rather than in a wrapper's parameter list, the
// schema, an implementation and a Meta type list kept in the same order.

class Arguments {
 public:
  Arguments(const c10::OperatorHandle& op, torch::jit::Stack* stack)
      : schema_(op.schema()), values_(torch::jit::last(*stack, schema_.arguments().size())) {}

  std::vector<at::Tensor> tensors(const char* name) const { return at(name).toTensorVector(); }
  std::optional<std::vector<at::Tensor>> optional_tensors(const char* name) const {
    const auto& value = at(name);
    if (value.isNone()) return std::nullopt;
    return value.toTensorVector();
  }
  at::Tensor tensor(const char* name) const { return at(name).toTensor(); }
  OptionalTensor optional_tensor(const char* name) const {
    const auto& value = at(name);
    if (value.isNone()) return std::nullopt;
    return value.toTensor();
  }
  double real(const char* name) const { return at(name).toDouble(); }
  std::optional<double> optional_real(const char* name) const {
    const auto& value = at(name);
    if (value.isNone()) return std::nullopt;
    return value.toDouble();
  }
  std::vector<double> reals(const char* name) const { return at(name).toDoubleVector(); }
  bool flag(const char* name) const { return at(name).toBool(); }
  std::vector<bool> flags(const char* name) const {
    const auto list = at(name).toBoolList();
    return {list.begin(), list.end()};
  }
  int64_t integer(const char* name) const { return at(name).toInt(); }
  std::vector<int64_t> integers(const char* name) const { return at(name).toIntVector(); }
  std::optional<std::vector<int64_t>> optional_integers(const char* name) const {
    const auto& value = at(name);
    if (value.isNone()) return std::nullopt;
    return value.toIntVector();
  }
  std::string string(const char* name) const { return at(name).toStringRef(); }
  OptionalNames optional_strings(const char* name) const {
    const auto& value = at(name);
    if (value.isNone()) return std::nullopt;
    std::vector<std::string> names;
    for (const auto& item : value.toListRef()) names.push_back(item.toStringRef());
    return names;
  }

  // The loss scaling and the whole-tensor sums' sharding every update op may take.
  F::GradScaling scaling() const {
    return scaling_of(optional_tensor("grad_scale"), optional_tensor("found_inf"));
  }
  F::Sharding sharding(TensorList params) const {
    const auto numels = optional_integers("numels");
    at::OptionalIntArrayRef counts;
    if (numels) counts = *numels;
    return sharding_of(params, counts, optional_strings("shard_groups"));
  }
  OptionalTensor found_inf() const { return optional_tensor("found_inf"); }

 private:
  const c10::IValue& at(const char* name) const {
    const auto index = schema_.argumentIndexWithName(name);
    // A kernel reading a name its schema lacks: a bug here, caught by any call.
    TORCH_INTERNAL_ASSERT(index.has_value(), schema_.name(), " has no argument '", name, "'");
    return values_[*index];
  }

  const c10::FunctionSchema& schema_;
  c10::ArrayRef<c10::IValue> values_;
};

// What a kernel returns: a Tensor, a float, or None for `-> ()`.
using Kernel = c10::IValue (*)(const Arguments&);

c10::IValue lars(const Arguments& a) {
  const auto params = a.tensors("params");
  const auto scale_clip = a.reals("scale_clip");
  TORCH_CHECK_VALUE(scale_clip.empty() || scale_clip.size() == 2,
                    "LARS: scale_clip must hold two values (low, high), got ", scale_clip.size());
  std::optional<F::ScaleClip> clip;
  if (!scale_clip.empty()) clip = clip_of(scale_clip[0], scale_clip[1]);
  const auto is_new = a.flags("buffer_is_new");
  std::unique_ptr<bool[]> flags(new bool[is_new.size()]());
  std::copy(is_new.begin(), is_new.end(), flags.get());
  return ratios_out(
      F::lars_(params, a.tensors("grads"), a.tensors("momentum_buffers"),
               c10::ArrayRef<bool>(flags.get(), is_new.size()),
               {.lr = a.real("lr"), .momentum = a.real("momentum"), .dampening = a.real("dampening"),
                .weight_decay = a.real("weight_decay"), .nesterov = a.flag("nesterov"),
                .scale_clip = clip},
               a.scaling(), a.sharding(params)),
      params);
}

// LAMB's and RaLars' trust ratios: returned, and written into local_lrs when given.
c10::IValue lamb(const Arguments& a) {
  const auto params = a.tensors("params");
  // LAMB has no bias correction: its counters are only advanced.
  const StepCounters counters("LAMB", {}, a.optional_tensors("step_tensors"), params.size());
  const auto local_lrs = a.optional_tensors("local_lrs");
  check_ratio_targets("LAMB", local_lrs, params.size());
  const auto ratios = F::lamb_(
      params, a.tensors("grads"), a.tensors("exp_avgs"), a.tensors("exp_avg_sqs"),
      {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"), .eps = a.real("eps"),
       .weight_decay = a.real("weight_decay"),
       .scale_clip = clip_of(a.real("clip_low"), a.real("clip_high"))},
      a.scaling(), a.sharding(params));
  store_ratios(local_lrs, ratios);
  counters.store(a.found_inf());
  return ratios_out(ratios, params);
}

c10::IValue ralars(const Arguments& a) {
  const auto params = a.tensors("params");
  const StepCounters counters("RaLars", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  const auto local_lrs = a.optional_tensors("local_lrs");
  check_ratio_targets("RaLars", local_lrs, params.size());
  const auto ratios = F::ralars_(
      params, a.tensors("grads"), a.tensors("exp_avgs"), a.tensors("exp_avg_sqs"), counters.steps(),
      {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"), .eps = a.real("eps"),
       .weight_decay = a.real("weight_decay"),
       .force_adaptive_momentum = a.flag("force_adaptive_momentum"),
       .scale_clip = clip_of(a.real("clip_low"), a.real("clip_high")),
       .sma_inf = a.optional_real("sma_inf")},
      a.scaling(), a.sharding(params));
  store_ratios(local_lrs, ratios);
  counters.store(a.found_inf());
  return ratios_out(ratios, params);
}

// Stores values[i] into the one-element tensor targets[i], in place.
c10::IValue write_scalars(const Arguments& a) {
  const auto targets = a.tensors("targets");
  const auto values = a.reals("values");
  TORCH_CHECK(targets.size() == values.size(), "write_scalars_: got ", values.size(),
              " values for ", targets.size(), " tensors");
  for (const auto& t : targets) {
    TORCH_CHECK(t.numel() == 1, "write_scalars_: a target has shape ", t.sizes(),
                "; expected one element");
  }
  for (size_t i = 0; i < targets.size(); ++i) write_scalar(targets[i], values[i]);
  return {};
}

// The reference keeps TAdam's moment weight as a one-element tensor (W_t).
c10::IValue tadam(const Arguments& a) {
  const auto params = a.tensors("params");
  const auto W_ts = a.tensors("W_ts");
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
  const StepCounters counters("TAdam", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::tadam_(params, a.tensors("grads"), a.tensors("exp_avgs"), a.tensors("exp_avg_sqs"),
            a.tensors("max_exp_avg_sqs"), weights, counters.steps(),
            {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"),
             .eps = a.real("eps"), .weight_decay = a.real("weight_decay"),
             .amsgrad = a.flag("amsgrad"), .dof = a.optional_real("dof")},
            a.scaling(), a.sharding(params));
  for (size_t i = 0; i < W_ts.size(); ++i) write_scalar(W_ts[i], weights[i]);
  counters.store(a.found_inf());
  return {};
}

c10::IValue adabelief(const Arguments& a) {
  const auto params = a.tensors("params");
  const StepCounters counters("AdaBelief", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::adabelief_(params, a.tensors("grads"), a.tensors("exp_avgs"), a.tensors("exp_avg_sqs"),
                a.tensors("max_exp_avg_sqs"), counters.steps(),
                {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"),
                 .eps = a.real("eps"), .weight_decay = a.real("weight_decay"),
                 .amsgrad = a.flag("amsgrad")},
                a.scaling());
  counters.store(a.found_inf());
  return {};
}

c10::IValue adamp(const Arguments& a) {
  const auto params = a.tensors("params");
  const StepCounters counters("AdamP", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::adamp_(params, a.tensors("grads"), a.tensors("exp_avgs"), a.tensors("exp_avg_sqs"),
            a.tensors("max_exp_avg_sqs"), counters.steps(),
            {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"),
             .eps = a.real("eps"), .weight_decay = a.real("weight_decay"),
             .amsgrad = a.flag("amsgrad"), .delta = a.real("delta")},
            a.scaling(), a.sharding(params));
  counters.store(a.found_inf());
  return {};
}

c10::IValue adan(const Arguments& a) {
  const auto params = a.tensors("params");
  const StepCounters counters("Adan", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::adan_(params, a.tensors("grads"), a.tensors("prev_grads"), a.tensors("exp_avgs"),
           a.tensors("exp_avg_sqs"), a.tensors("exp_avg_deltas"), a.tensors("max_exp_avg_deltas"),
           counters.steps(),
           {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"),
            .beta3 = a.real("beta3"), .eps = a.real("eps"), .weight_decay = a.real("weight_decay"),
            .amsgrad = a.flag("amsgrad")},
           a.scaling());
  counters.store(a.found_inf());
  return {};
}

c10::IValue ademamix(const Arguments& a) {
  const auto params = a.tensors("params");
  const StepCounters counters("AdEMAMix", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::ademamix_(params, a.tensors("grads"), a.tensors("exp_avgs"), a.tensors("exp_avgs_slow"),
               a.tensors("exp_avg_sqs"), counters.steps(),
               {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"),
                .beta3 = a.real("beta3"), .alpha = a.real("alpha"), .eps = a.real("eps"),
                .weight_decay = a.real("weight_decay")},
               a.scaling());
  counters.store(a.found_inf());
  return {};
}

// What every update op checks before it writes, for one group, so that a
// step over several groups can check them all before updating any.
c10::IValue validate_group(const Arguments& a) {
  const auto optimizer = a.string("optimizer");
  const auto params = a.tensors("params");
  F::detail::check_group(optimizer.c_str(), params, a.tensors("grads"), {});
  F::detail::check_flat_state(optimizer.c_str(), params, a.tensors("buffers"), a.integers("owners"));
  for (int64_t step : a.integers("steps")) {
    TORCH_CHECK(step >= 1, optimizer, ": a state 'step' is ", step - 1,
                "; counters cannot be negative");
  }
  return {};
}

c10::IValue lookahead_sync(const Arguments& a) {
  F::lookahead_sync_(a.tensors("fast"), a.tensors("slow"), a.real("sync_rate"));
  return {};
}

// Scout's statistics, held here: F::ScoutStats only refers to them.
struct ScoutLists {
  explicit ScoutLists(const Arguments& a)
      : prev(a.tensors("prev")), mean(a.tensors("mean")), m2(a.tensors("m2")),
        max(a.tensors("max")), min(a.tensors("min")) {}
  F::ScoutStats stats() const { return {prev, mean, m2, max, min}; }
  std::vector<at::Tensor> prev, mean, m2, max, min;
};

c10::IValue scout_accumulate(const Arguments& a) {
  const ScoutLists lists(a);
  F::scout_accumulate_(a.tensors("fast"), lists.stats(), a.integer("count"));
  return {};
}

c10::IValue scout_coherence(const Arguments& a) {
  const ScoutLists lists(a);
  return F::scout_coherence(lists.stats(), a.integer("count"),
                            sharding_of(lists.prev, std::nullopt, a.optional_strings("shard_groups")));
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

c10::IValue lookahead_step(const Arguments& a) {
  const auto fast_steps = a.tensor("fast_steps");
  const int64_t sync_period = a.integer("sync_period");
  const int64_t count = advanced_counter(fast_steps, sync_period);
  if (skipped(a.found_inf())) return {};
  if (count % sync_period == 0) {
    F::lookahead_sync_(a.tensors("fast"), a.tensors("slow"), a.real("sync_rate"));
  }
  write_scalar(fast_steps, static_cast<double>(count));
  return {};
}

c10::IValue scout_step(const Arguments& a) {
  const auto fast_steps = a.tensor("fast_steps");
  const int64_t sync_period = a.integer("sync_period");
  const int64_t count = advanced_counter(fast_steps, sync_period);
  if (skipped(a.found_inf())) return {};
  const auto fast = a.tensors("fast");
  const ScoutLists lists(a);
  const auto stats = lists.stats();
  const auto& prev = lists.prev;
  const int64_t changes_before = (count - 1) % sync_period;
  F::scout_accumulate_(fast, stats, changes_before);
  if (count % sync_period == 0) {
    const double coherence =
        F::scout_coherence(stats, changes_before + 1,
                           sharding_of(prev, std::nullopt, a.optional_strings("shard_groups")));
    const double rate = std::max(1.0 - coherence, a.real("sync_rate"));
    F::lookahead_sync_(fast, a.tensors("slow"), rate);
    write_scalar(a.tensor("last_sync_rate"), rate);
    // The next period's changes start from the synchronised weights.
    for (size_t i = 0; i < fast.size(); ++i) prev[i].copy_(fast[i]);
  }
  write_scalar(fast_steps, static_cast<double>(count));
  return {};
}

// Arguments every update op takes after its own: loss scaling (GradScaler),
// and for those with whole-tensor sums, the DTensor sharding of those sums.
#define HOLOCRON_SCALING "Tensor? grad_scale=None, Tensor? found_inf=None"
#define HOLOCRON_SHARDING "int[]? numels=None, str[]? shard_groups=None"

struct Declaration {
  const char* schema;
  Kernel kernel;
};

// The ops: each one's schema (its only declaration) and kernel.
const Declaration kOps[] = {
    {"lars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
     "bool[] buffer_is_new, float lr, float momentum, float dampening, float weight_decay, "
     "bool nesterov, float[] scale_clip, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING ") -> Tensor",
     &lars},
    {"lamb_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
     "Tensor(c!)[] exp_avg_sqs, float lr, float beta1, float beta2, float eps, "
     "float weight_decay, float clip_low, float clip_high, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING
     ", Tensor(s!)[]? step_tensors=None, Tensor(l!)[]? local_lrs=None) -> Tensor",
     &lamb},
    {"ralars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
     "Tensor(c!)[] exp_avg_sqs, int[] steps, float lr, float beta1, float beta2, float eps, "
     "float weight_decay, bool force_adaptive_momentum, float clip_low, float clip_high, "
     "float? sma_inf=None, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING
     ", Tensor(s!)[]? step_tensors=None, Tensor(l!)[]? local_lrs=None) -> Tensor",
     &ralars},
    {"tadam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
     "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] W_ts, int[] steps, "
     "float lr, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, "
     "float? dof, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING
     ", Tensor(s!)[]? step_tensors=None) -> ()",
     &tadam},
    {"adabelief_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
     "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
     "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, " HOLOCRON_SCALING
     ", Tensor(s!)[]? step_tensors=None) -> ()",
     &adabelief},
    {"adamp_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
     "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
     "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, float delta, "
     HOLOCRON_SCALING ", " HOLOCRON_SHARDING ", Tensor(s!)[]? step_tensors=None) -> ()",
     &adamp},
    {"adan_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] prev_grads, "
     "Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] exp_avg_deltas, "
     "Tensor(f!)[] max_exp_avg_deltas, int[] steps, float lr, float beta1, float beta2, "
     "float beta3, float eps, float weight_decay, bool amsgrad, " HOLOCRON_SCALING
     ", Tensor(s!)[]? step_tensors=None) -> ()",
     &adan},
    {"ademamix_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
     "Tensor(c!)[] exp_avgs_slow, Tensor(d!)[] exp_avg_sqs, int[] steps, float lr, float beta1, "
     "float beta2, float beta3, float alpha, float eps, float weight_decay, " HOLOCRON_SCALING
     ", Tensor(s!)[]? step_tensors=None) -> ()",
     &ademamix},
    {"validate_group(str optimizer, Tensor[] params, Tensor[] grads, Tensor[] buffers, "
     "int[] owners, int[] steps) -> ()",
     &validate_group},
    {"write_scalars_(Tensor(a!)[] targets, float[] values) -> ()", &write_scalars},
    {"lookahead_sync_(Tensor(a!)[] fast, Tensor(b!)[] slow, float sync_rate) -> ()",
     &lookahead_sync},
    {"lookahead_step_(Tensor(a!)[] fast, Tensor(b!)[] slow, Tensor(c!) fast_steps, "
     "int sync_period, float sync_rate, Tensor? found_inf=None) -> ()",
     &lookahead_step},
    {"scout_step_(Tensor(a!)[] fast, Tensor(b!)[] slow, Tensor(c!)[] prev, Tensor(d!)[] mean, "
     "Tensor(e!)[] m2, Tensor(f!)[] max, Tensor(g!)[] min, Tensor(h!) fast_steps, "
     "Tensor(i!) last_sync_rate, int sync_period, float sync_rate, Tensor? found_inf=None, "
     "str[]? shard_groups=None) -> ()",
     &scout_step},
    {"scout_accumulate_(Tensor[] fast, Tensor(a!)[] prev, Tensor(b!)[] mean, Tensor(c!)[] m2, "
     "Tensor(d!)[] max, Tensor(e!)[] min, int count) -> ()",
     &scout_accumulate},
    {"scout_coherence(Tensor[] prev, Tensor[] mean, Tensor[] m2, Tensor[] max, Tensor[] min, "
     "int count, str[]? shard_groups=None) -> float",
     &scout_coherence},
};

#undef HOLOCRON_SCALING
#undef HOLOCRON_SHARDING

std::string name_of(const char* schema) {
  const std::string text(schema);
  return text.substr(0, text.find('('));
}

// Runs a kernel on the boxed stack: its arguments are replaced by its return value.
class Boxed final : public c10::OperatorKernel {
 public:
  explicit Boxed(Kernel kernel) : kernel_(kernel) {}
  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
    c10::IValue result = kernel_(Arguments(op, stack));
    torch::jit::drop(*stack, op.schema().arguments().size());
    if (!op.schema().returns().empty()) stack->push_back(std::move(result));
  }

 private:
  Kernel kernel_;
};

// Fake-tensor tracing (torch.compile, opcheck) needs no math: shapes never
// change and what is returned is one ratio per tensor (on the meta device)
// or a float, which cannot be faked (tracing would fold in this 0: compiled
// steps use scout_step_, which keeps the coherence inside).
void meta_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t count = schema.arguments().size();
  const auto first = torch::jit::peek(*stack, 0, count);
  const int64_t tensors = first.isTensorList() ? static_cast<int64_t>(first.toListRef().size()) : 0;
  torch::jit::drop(*stack, count);
  if (schema.returns().empty()) return;
  if (schema.returns()[0].type()->kind() == c10::TypeKind::FloatType) {
    stack->emplace_back(0.0);
    return;
  }
  stack->emplace_back(at::empty({tensors}, at::TensorOptions().dtype(at::kDouble).device(at::kMeta)));
}

}  // namespace

TORCH_LIBRARY(holocron, m) {
  for (const auto& op : kOps) m.def(op.schema);
  // Which CPU kernels run the updates (see functional.h): for tests and benchmarks.
  m.def("cpu_capability() -> str", [] { return F::cpu_capability(); });
  m.def("set_cpu_capability(str name) -> ()",
        [](const std::string& name) { F::set_cpu_capability(name); });
  m.def("available_cpu_capabilities() -> str[]", [] { return F::available_cpu_capabilities(); });
}

// The functional layer is written with ATen ops, so one kernel serves every device.
TORCH_LIBRARY_IMPL(holocron, CompositeExplicitAutograd, m) {
  for (const auto& op : kOps) {
    m.impl(name_of(op.schema).c_str(), torch::CppFunction::makeFromBoxedFunctor(std::make_unique<Boxed>(op.kernel)));
  }
}

TORCH_LIBRARY_IMPL(holocron, Meta, m) {
  for (const auto& op : kOps) {
    m.impl(name_of(op.schema).c_str(), torch::CppFunction::makeFromBoxedFunction<&meta_kernel>());
  }
}

}  // namespace holocron::optim::ops
