// LAMB: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/lamb.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/caution.h"
#include "algorithms/common.h"
#include "algorithms/trust_ratio.h"

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;
using namespace trust;

// Only this file's functional function calls them.
namespace {

Sums lamb_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               c10::ArrayRef<int64_t> steps, const LambHyper& h) {
  return trust_sums(params, grads, exp_avgs, exp_avg_sqs, h.beta1, lamb_grad_weight(h), h.beta2,
                    LambDirection{h, steps});
}

void lamb(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
          c10::ArrayRef<int64_t> steps, const LambHyper& h, c10::ArrayRef<double> local_lrs) {
  trust_apply(params, grads, exp_avgs, exp_avg_sqs, h.beta1, lamb_grad_weight(h), h.beta2, h.lr,
              local_lrs, LambDirection{h, steps}, lamb_decay_factor(h));
}

// With caution, per tensor: ||p||^2, the count k of d * g > 0, ||kept d||^2 and p . kept d, d being
// the Adam step before the weight decay (the fused pass's sums).
Sums lamb_cautious_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                        c10::ArrayRef<int64_t> steps, const LambHyper& h) {
  Sums sums(params.size(), Sums::value_type{});
  const LambDirection direction{h, steps};
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.in(params[i]);
    auto g = scope.in(grads[i]);
    auto m = scope.in(exp_avgs[i]).clone();
    auto v = scope.in(exp_avg_sqs[i]).clone();
    update_moments(m, v, g, h.beta1, lamb_grad_weight(h), h.beta2);
    const auto d = direction.adam_step(m, v, i);
    const auto keep = d * g > 0;
    const auto kept = at::where(keep, d, at::zeros_like(d));
    sums[i] = {squared_norm_of(p), keep.sum(at::kDouble).item<double>(), squared_norm_of(kept), dot_of(p, kept)};
  }
  return sums;
}

// The cautious direction: the kept Adam step times its tensor's scale, plus the coupled decay.
struct CautiousLambDirection {
  LambDirection direction;
  TensorList grads;
  c10::ArrayRef<double> scales;
  at::Tensor operator()(const at::Tensor& p, const at::Tensor& m, const at::Tensor& v, size_t i) const {
    const auto d = direction.adam_step(m, v, i);
    const auto g = grads[i].to(d.scalar_type());
    return LambDirection::with_decay(at::where(d * g > 0, d * scales[i], at::zeros_like(d)), p,
                                     lamb_coupled_decay(direction.h));
  }
};

void lamb_cautious(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                   c10::ArrayRef<int64_t> steps, const LambHyper& h, c10::ArrayRef<double> local_lrs,
                   c10::ArrayRef<double> scales) {
  trust_apply(params, grads, exp_avgs, exp_avg_sqs, h.beta1, lamb_grad_weight(h), h.beta2, h.lr, local_lrs,
              CautiousLambDirection{LambDirection{h, steps}, grads, scales}, lamb_decay_factor(h));
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

void check(const LambHyper& h) {
  check_lamb_family("LAMB", h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.scale_clip);
}

namespace {

// From a tensor's cautious sums (over all shards) the scale of its kept elements, timm's
// 1 / max(k / n, 1e-3), and in place of the count the ||u||^2 the trust ratio takes, of
// u = scale * kept d + wd * p.
double lamb_caution_scale(std::array<double, cpu::kMaxSums>& row, double weight_decay, int64_t numel) {
  const double scale = caution_scale(CautionScale::kTimm, row[1], static_cast<double>(numel));
  row[1] = scale * scale * row[2] + 2.0 * weight_decay * scale * row[3] + weight_decay * weight_decay * row[0];
  return scale;
}

}  // namespace

std::vector<double> lamb_(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps, const LambHyper& h,
                          const GradScaling& scaling, const Sharding& sharding) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("LAMB", {{"exp_avgs", exp_avgs, true},
                                                {"exp_avg_sqs", exp_avg_sqs, false}}, scaling);
  check_group("LAMB", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  check_steps("LAMB", steps, params.size());
  check_sharding("LAMB", sharding, params);
  const CompensatedWeights compensated_weights("LAMB", params, scaling);
  const auto inv_grad_scale = grad_unscale("LAMB", scaling);
  if (!inv_grad_scale) return {};
  const auto rule = lamb_trust_rule(h);
  auto& scratch = fused_scratch();
  const cpu::protocol::lamb::Arrays<TensorList> arrays{
      .param = params, .grad = grads, .exp_avg = exp_avgs, .exp_avg_sq = exp_avg_sqs};
  if (!fused_group(scratch.group, params, arrays)) {
    const auto g = unscaled_grads(grads, *inv_grad_scale);
    if (h.caution) {
      auto sums = kernels::reference::lamb_cautious_sums(params, g, exp_avgs, exp_avg_sqs, steps, h);
      all_reduce_sums("LAMB", sharding, sums, 4);
      std::vector<double> scales(params.size());
      for (size_t i = 0; i < params.size(); ++i) {
        scales[i] = lamb_caution_scale(sums[i], lamb_coupled_decay(h), whole_numel(sharding, params, i));
      }
      const auto local_lrs = trust_ratios(sums, rule);
      kernels::reference::lamb_cautious(params, g, exp_avgs, exp_avg_sqs, steps, h, local_lrs, scales);
      return local_lrs;
    }
    auto norms = kernels::reference::lamb_sums(params, g, exp_avgs, exp_avg_sqs, steps, h);
    all_reduce_sums("LAMB", sharding, norms, 2);
    const auto local_lrs = trust_ratios(norms, rule);
    kernels::reference::lamb(params, g, exp_avgs, exp_avg_sqs, steps, h, local_lrs);
    return local_lrs;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(cpu::protocol::lamb::Constants{.beta1 = h.beta1,
                                                    .beta2 = h.beta2,
                                                    .eps = h.eps,
                                                    .weight_decay = lamb_coupled_decay(h),
                                                    .grad_weight = lamb_grad_weight(h),
                                                    .decay = lamb_decay_factor(h)});
  for (size_t i = 0; i < params.size(); ++i) {
    // The step is known after pass 1 (fused_trust_step).
    args.per_tensor[i].set(cpu::protocol::lamb::PerTensor{
        .inv_bc1 = h.bias_correction ? 1.0 / bias_correction(h.beta1, steps[i]) : 1.0,
        .inv_sqrt_bc2 = h.bias_correction ? inverse_sqrt_bias_correction(h.beta2, steps[i]) : 1.0,
        .step = 0.0,
        .caution_scale = 1.0});
  }
  if (h.caution) {
    std::vector<double> local_lrs(params.size());
    two_passes("LAMB", sharding, 4, {cpu::Pass::LambCautiousMoments, scratch.group, args},
               {cpu::Pass::LambCautiousApply, scratch.group, args}, scratch.sums,
               [&](int64_t t, std::array<double, cpu::kMaxSums>& sums) {
                 const auto i = static_cast<size_t>(t);
                 auto row = args.per_tensor[i].get<cpu::protocol::lamb::PerTensor>();
                 row.caution_scale = lamb_caution_scale(sums, lamb_coupled_decay(h), whole_numel(sharding, params, i));
                 local_lrs[i] = trust_ratio_of(sums, rule);
                 row.step = -h.lr * local_lrs[i];
                 args.per_tensor[i].set(row);
               });
    mark_written({params, exp_avgs, exp_avg_sqs});
    return local_lrs;
  }
  auto local_lrs = fused_trust_step<cpu::protocol::lamb::PerTensor>(
      cpu::Pass::LambMoments, cpu::Pass::LambApply, scratch, "LAMB", h.lr, rule, sharding);
  mark_written({params, exp_avgs, exp_avg_sqs});
  return local_lrs;
}

std::vector<double> lamb_(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, const LambHyper& h, const GradScaling& scaling,
                          const Sharding& sharding) {
  TORCH_CHECK_VALUE(!h.bias_correction,
                    "LAMB: bias_correction needs each parameter's step count: call lamb_ with steps");
  // Without bias correction the counts are not read.
  const std::vector<int64_t> steps(params.size(), 1);
  return lamb_(params, grads, exp_avgs, exp_avg_sqs, steps, h, scaling, sharding);
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

LAMBOptions::LAMBOptions(double lr) : lr_(lr) {}

functional::LambHyper LAMBOptions::hyper() const {
  double decay = weight_decay();
  TORCH_CHECK_VALUE(!max_lr() || (*max_lr() > 0 && std::isfinite(*max_lr())), "LAMB: invalid max_lr value: ",
                    max_lr() ? *max_lr() : 0.0, "; it must be > 0 and finite");
  const bool corrected = corrected_weight_decay() && decoupled_weight_decay();
  if (corrected) {
    TORCH_CHECK_VALUE(max_lr().has_value(),
                      "LAMB: corrected_weight_decay needs max_lr > 0 (the peak lr the decay follows), got none");
    // The op decays by lr * weight_decay: timm's lr^2 / max_lr * weight_decay.
    decay *= lr() / *max_lr();
  }
  auto hyper = hyper_of<functional::LambHyper>(*this);
  hyper.weight_decay = decay;
  // The ratio's gate reads the option's decay (timm's), not the corrected one (0 where lr is).
  hyper.always_adapt = always_adapt() || (corrected && weight_decay() != 0);
  return hyper;
}

namespace {

// timm's max_lr_snapshot: the constructor's lr, where corrected_weight_decay is asked without one.
LAMBOptions with_max_lr(LAMBOptions options, double peak) {
  if (options.corrected_weight_decay() && !options.max_lr()) options.max_lr(peak);
  return options;
}

double peak_lr(const LAMBOptions& defaults) { return defaults.max_lr().value_or(defaults.lr()); }

std::vector<OptimizerParamGroup> groups_with_max_lr(const std::vector<OptimizerParamGroup>& groups,
                                                    const LAMBOptions& defaults) {
  std::vector<OptimizerParamGroup> out;
  out.reserve(groups.size());
  for (const auto& group : groups) {
    const auto* options = group.has_options() ? dynamic_cast<const LAMBOptions*>(&group.options()) : nullptr;
    if (options == nullptr) {
      out.push_back(group);  // the defaults' copy, or another type that add_param_group refuses
    } else {
      out.emplace_back(group.params(), std::make_unique<LAMBOptions>(with_max_lr(*options, peak_lr(defaults))));
    }
  }
  return out;
}

}  // namespace

LAMB::LAMB(const std::vector<OptimizerParamGroup>& param_groups, LAMBOptions defaults)
    : Algorithm(groups_with_max_lr(param_groups, defaults), with_max_lr(defaults, peak_lr(defaults)), "LAMB") {}
LAMB::LAMB(TensorVector params, LAMBOptions defaults)
    : LAMB({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void LAMB::init_state(LAMBParamState& state, const torch::Tensor& param,
                      const LAMBOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param, options);
  detail::ensure_buffer(state.exp_avg_sq(), param, options);
}

void LAMB::update(const LAMBOptions& options, const TensorVector& params, const TensorVector& grads,
                  const std::vector<LAMBParamState*>& states) {
  const auto steps = next_steps(states);
  auto local_lrs = functional::lamb_(params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
                                     gather(states, [](auto& s) { return s.exp_avg_sq(); }), steps,
                                     options.hyper(), grad_scaling());
  store_steps(states, steps);
  for (size_t i = 0; i < states.size(); ++i) states[i]->local_lr(local_lrs[i]);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

// LAMB's and RaLars' trust ratios: returned, and written into local_lrs when given.
c10::IValue lamb(const Arguments& a) {
  const auto params = a.params();
  // Counters given neither as ints nor as tensors (a caller from before bias_correction) are only
  // read by it.
  const auto steps = a.optional_integers("steps");
  const auto step_tensors = a.optional_tensors("step_tensors");
  TORCH_CHECK_VALUE(steps || step_tensors || !a.flag("bias_correction"),
                    "LAMB: bias_correction needs the step counters (steps or step_tensors)");
  const std::vector<int64_t> unknown_steps(steps || step_tensors ? 0 : params.size(), 1);
  const StepCounters counters("LAMB", steps ? c10::IntArrayRef(*steps) : unknown_steps, step_tensors,
                              params.size());
  const auto local_lrs = a.optional_state("local_lrs");
  check_ratio_targets("LAMB", local_lrs, params.size());
  const auto ratios = F::lamb_(
      params, a.grads("LAMB", params), a.state("exp_avgs"), a.state("exp_avg_sqs"), counters.steps(),
      a.hyper<F::LambHyper>("LAMB"),
      a.scaling(), a.sharding(params));
  store_ratios(local_lrs, ratios);
  counters.store(a.found_inf());
  return ratios_out(ratios, params);
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "lamb_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, float lr, float beta1, float beta2, float eps, "
    "float weight_decay, float clip_low, float clip_high, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING
    ", Tensor(s!)[]? step_tensors=None, Tensor(l!)[]? local_lrs=None, int[]? steps=None, "
    "bool bias_correction=False, bool grad_averaging=True, bool trust_clip=False, "
    "bool always_adapt=True, " HOLOCRON_CLIPPING ", " HOLOCRON_MAXIMIZE
    ", bool decoupled_weight_decay=False, bool caution=False, " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> Tensor",
    &lamb)

}  // namespace holocron::optim::ops
