// AdEMAMix: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/ademamix.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/caution.h"
#include "algorithms/common.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace holocron::optim::functional::detail {
namespace {
// The paper's warm-ups (its Algorithm 1, as bitsandbytes computes them) at a parameter's step t:
// alpha rises linearly from 0, and beta3 from beta1 so that the slow average's half-life grows
// linearly, each reaching its value at the end of its warm-up.
double ademamix_alpha(const AdEMAMixHyper& h, int64_t step) {
  if (!h.t_alpha) return h.alpha;
  return std::min(static_cast<double>(step) * h.alpha / *h.t_alpha, h.alpha);
}
double ademamix_beta3(const AdEMAMixHyper& h, int64_t step) {
  // Past the warm-up the peers' formula (capped at beta3) is beta3 itself when beta1 < beta3, and
  // its denominator may reach 0 otherwise: beta3 then, in every case.
  if (!h.t_beta3 || static_cast<double>(step) >= *h.t_beta3) return h.beta3;
  const double log_beta1 = std::log(h.beta1), log_beta3 = std::log(h.beta3);
  const double progress = static_cast<double>(step) / *h.t_beta3;
  return std::min(std::exp(log_beta1 * log_beta3 / ((1.0 - progress) * log_beta3 + progress * log_beta1)), h.beta3);
}
}  // namespace
}  // namespace holocron::optim::functional::detail

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

// Only this file's functional function calls them.
namespace {

void ademamix(TensorList params, TensorList grads, TensorList exp_avgs,
               TensorList exp_avgs_slow, TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const AdEMAMixHyper& h, c10::ArrayRef<double> caution_scales) {

  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
    auto g = decayed_grad(scope.in(grads[i]), p, decay.coupled);
    auto m1 = scope.inout(exp_avgs[i]);
    auto m2 = scope.inout(exp_avgs_slow[i]);
    auto nu = scope.inout(exp_avg_sqs[i]);
    m1.mul_(h.beta1).add_(g, 1.0 - h.beta1);
    nu.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
    const double beta3 = ademamix_beta3(h, steps[i]);
    m2.mul_(beta3).add_(g, 1.0 - beta3);
    auto denom = adam_denominator(scope, nu, false, {}, i, bias_correction(h.beta2, steps[i]), h.eps);
    auto fast = m1 / bias_correction(h.beta1, steps[i]);
    if (h.caution) fast = at::where(m1 * g > 0, fast * caution_scales[i], at::zeros_like(fast));
    auto numerator = fast.add_(m2, ademamix_alpha(h, steps[i]));
    if (decay.factor != 1.0) p.mul_(decay.factor);
    p.addcdiv_(numerator, denom, -h.lr);
    scope.commit();
  }
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

void check(const AdEMAMixHyper& h) {
  check_non_negative("AdEMAMix", "lr", h.lr);
  check_beta("AdEMAMix", "betas[0]", h.beta1);
  check_beta("AdEMAMix", "betas[1]", h.beta2);
  check_beta("AdEMAMix", "betas[2]", h.beta3);
  check_hyper("AdEMAMix", "alpha", h.alpha, -INFINITY, false, INFINITY, false);
  check_non_negative("AdEMAMix", "eps", h.eps);
  // The reference accepts a negative weight decay here; torch refuses it and
  // so do we.
  check_non_negative("AdEMAMix", "weight_decay", h.weight_decay);
  for (const auto& [name, steps] : {std::pair{"t_alpha", h.t_alpha}, std::pair{"t_beta3", h.t_beta3}}) {
    TORCH_CHECK_VALUE(!steps || (std::isfinite(*steps) && *steps > 0.0), "AdEMAMix: invalid ", name,
                      " value: ", steps.value_or(0.0), " (expected None or a finite number > 0)");
  }
  // The beta3 warm-up interpolates log(beta1) and log(beta3).
  TORCH_CHECK_VALUE(!h.t_beta3 || (h.beta1 > 0.0 && h.beta3 > 0.0),
                    "AdEMAMix: t_beta3 needs betas[0] > 0 and betas[2] > 0, got betas[0]=", h.beta1,
                    " and betas[2]=", h.beta3);
}

void ademamix_(TensorList params, TensorList grads, TensorList exp_avgs,
               TensorList exp_avgs_slow, TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const AdEMAMixHyper& h, const GradScaling& scaling, const Sharding& sharding) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("AdEMAMix", {{"exp_avgs", exp_avgs, true},
                                                    {"exp_avgs_slow", exp_avgs_slow, true},
                                                    {"exp_avg_sqs", exp_avg_sqs, false}}, scaling);
  check_group("AdEMAMix", params, grads,
              {{"exp_avgs", exp_avgs}, {"exp_avgs_slow", exp_avgs_slow}, {"exp_avg_sqs", exp_avg_sqs}});
  check_steps("AdEMAMix", steps, params.size());
  check_sharding("AdEMAMix", sharding, params);
  const CompensatedWeights compensated_weights("AdEMAMix", params, scaling);
  const auto inv_grad_scale = grad_unscale("AdEMAMix", scaling);
  if (!inv_grad_scale) return;
  // pytorch-optimizer's rescaling of the kept elements.
  const auto caution_scales =
      h.caution ? caution_scales_of("AdEMAMix", CautionScale::kPytorchOptimizer, params, grads, exp_avgs, h.beta1,
                                    1.0 - h.beta1,
                                    split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay).coupled,
                                    *inv_grad_scale, sharding)
                : std::vector<double>(params.size(), 1.0);
  auto& scratch = fused_scratch();
  namespace ademamix = cpu::protocol::ademamix;
  if (!fused_group(scratch.group, params,
                   ademamix::Arrays<TensorList>{.param = params,
                                                .grad = grads,
                                                .exp_avg = exp_avgs,
                                                .exp_avg_slow = exp_avgs_slow,
                                                .exp_avg_sq = exp_avg_sqs})) {
    kernels::reference::ademamix(params, unscaled_grads(grads, *inv_grad_scale),
                                 exp_avgs, exp_avgs_slow, exp_avg_sqs, steps, h, caution_scales);
    return;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  args.constants.set(ademamix::Constants{.beta1 = h.beta1,
                                         .beta2 = h.beta2,
                                         .eps = h.eps,
                                         .weight_decay = decay.coupled,
                                         .decay = decay.factor,
                                         .caution = h.caution});
  for (size_t i = 0; i < params.size(); ++i) {
    args.per_tensor[i].set(ademamix::PerTensor{.beta3 = ademamix_beta3(h, steps[i]),
                                               .alpha = ademamix_alpha(h, steps[i]),
                                               .inv_bc1 = 1.0 / bias_correction(h.beta1, steps[i]),
                                               .inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                                               .step = -h.lr,
                                               .caution_scale = caution_scales[i]});
  }
  cpu::run(cpu::Pass::AdEMAMixApply, scratch.group, args);
  mark_written({params, exp_avgs, exp_avgs_slow, exp_avg_sqs});
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

AdEMAMixOptions::AdEMAMixOptions(double lr) : lr_(lr) {}

functional::AdEMAMixHyper AdEMAMixOptions::hyper() const {
  return hyper_of<functional::AdEMAMixHyper>(*this);
}

AdEMAMix::AdEMAMix(const std::vector<OptimizerParamGroup>& param_groups, AdEMAMixOptions defaults)
    : Algorithm(param_groups, defaults, "AdEMAMix") {}
AdEMAMix::AdEMAMix(TensorVector params, AdEMAMixOptions defaults)
    : AdEMAMix({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void AdEMAMix::init_state(AdEMAMixParamState& state, const torch::Tensor& param,
                          const AdEMAMixOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param, options);
  detail::ensure_buffer(state.exp_avg_slow(), param, options);
  detail::ensure_buffer(state.exp_avg_sq(), param, options);
}

void AdEMAMix::update(const AdEMAMixOptions& options, const TensorVector& params,
                      const TensorVector& grads, const std::vector<AdEMAMixParamState*>& states) {
  auto steps = next_steps(states);
  functional::ademamix_(params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
                        gather(states, [](auto& s) { return s.exp_avg_slow(); }),
                        gather(states, [](auto& s) { return s.exp_avg_sq(); }), steps,
                        options.hyper(), grad_scaling());
  store_steps(states, steps);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

c10::IValue ademamix(const Arguments& a) {
  const auto params = a.params();
  const StepCounters counters("AdEMAMix", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::ademamix_(params, a.grads("AdEMAMix", params), a.state("exp_avgs"), a.state("exp_avgs_slow"),
               a.state("exp_avg_sqs"), counters.steps(),
               a.hyper<F::AdEMAMixHyper>("AdEMAMix"),
               a.scaling(), a.sharding(params));
  counters.store(a.found_inf());
  return {};
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "ademamix_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avgs_slow, Tensor(d!)[] exp_avg_sqs, int[] steps, float lr, float beta1, "
    "float beta2, float beta3, float alpha, float eps, float weight_decay, " HOLOCRON_SCALING
    ", Tensor(s!)[]? step_tensors=None, " HOLOCRON_MAXIMIZE ", float? t_alpha=None, float? t_beta3=None, "
    "bool decoupled_weight_decay=False, bool caution=False, " HOLOCRON_SHARDING ", " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> ()",
    &ademamix)

}  // namespace holocron::optim::ops
