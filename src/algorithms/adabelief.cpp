// AdaBelief: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/adabelief.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/common.h"

// ---- What both backends take from the options ----------------------------------

namespace holocron::optim::functional::detail {
namespace {

WeightDecay adabelief_weight_decay(const AdaBeliefHyper& h) {
  // fixed_decay: timm's p *= 1 - weight_decay, not scaled by lr.
  return split_weight_decay(h.weight_decay, h.fixed_decay ? 1.0 : h.lr, h.decoupled_weight_decay);
}

// How a tensor at step t moves, with timm's rectification (forked from RAdam) when asked:
// rho_t, the approximated length of the second moment's simple moving average, decides
// between the rectified adaptive step (rho_t >= 5) and a momentum step or none. Written as
// timm writes it, so that a rho_t on the edge falls on the same side.
kernels::cpu::protocol::adabelief::PerTensor adabelief_step(const AdaBeliefHyper& h, int64_t t) {
  using Direction = kernels::cpu::protocol::adabelief::Direction;
  const double bc1 = bias_correction(h.beta1, t);
  if (!h.rectify) {
    return {.inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, t), .step = -h.lr / bc1,
            .direction = Direction::Adaptive};
  }
  const double beta2_t = std::pow(h.beta2, static_cast<double>(t));
  const double rho_max = 2.0 / (1.0 - h.beta2) - 1.0;
  const double rho_t = rho_max - 2.0 * static_cast<double>(t) * beta2_t / (1.0 - beta2_t);
  if (rho_t >= 5.0) {
    const double step_size = std::sqrt((1.0 - beta2_t) * (rho_t - 4.0) / (rho_max - 4.0) * (rho_t - 2.0) /
                                       rho_t * rho_max / (rho_max - 2.0)) / bc1;
    return {.inv_sqrt_bc2 = 1.0, .step = -step_size * h.lr, .direction = Direction::RectifiedAdaptive};
  }
  if (h.degenerated_to_sgd) return {.inv_sqrt_bc2 = 1.0, .step = -(1.0 / bc1) * h.lr, .direction = Direction::Momentum};
  return {.inv_sqrt_bc2 = 1.0, .step = 0.0, .direction = Direction::None};
}

}  // namespace
}  // namespace holocron::optim::functional::detail

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

// Only this file's functional function calls them.
namespace {

void adabelief(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdaBeliefHyper& h) {
  using Direction = kernels::cpu::protocol::adabelief::Direction;
  const auto decay = adabelief_weight_decay(h);
  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, decay.coupled);
    auto m = scope.inout(exp_avgs[i]);
    auto s = scope.inout(exp_avg_sqs[i]);
    m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
    auto residual = g - m;
    s.mul_(h.beta2).addcmul_(residual, residual, 1.0 - h.beta2);
    if (h.eps_in_variance) s.add_(h.eps);
    if (decay.factor != 1.0) p.mul_(decay.factor);
    const auto move = adabelief_step(h, steps[i]);
    if (move.direction == Direction::Adaptive) {
      p.addcdiv_(m, adam_denominator(scope, s, h.amsgrad, max_exp_avg_sqs, i, bias_correction(h.beta2, steps[i]), h.eps),
                 move.step);
    } else {
      if (h.amsgrad) {
        auto max_s = scope.inout(max_exp_avg_sqs[i]);
        at::maximum_out(max_s, max_s, s);
      }
      if (move.direction == Direction::RectifiedAdaptive) p.addcdiv_(m, s.sqrt().add_(h.eps), move.step);
      if (move.direction == Direction::Momentum) p.add_(m, move.step);
    }
    scope.commit();
  }
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

void check(const AdaBeliefHyper& h) {
  check_adam_like("AdaBelief", h.lr, {h.beta1, h.beta2}, h.eps, h.weight_decay);
  TORCH_CHECK_VALUE(!h.fixed_decay || h.decoupled_weight_decay,
                    "AdaBelief: fixed_decay=True sets how the decoupled weight decay scales "
                    "(p *= 1 - weight_decay); it needs decoupled_weight_decay=True, got False");
}

void adabelief_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                const AdaBeliefHyper& h, const GradScaling& scaling) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("AdaBelief", {{"exp_avgs", exp_avgs, true},
                                                     {"exp_avg_sqs", exp_avg_sqs, false},
                                                     {"max_exp_avg_sqs", if_used(h.amsgrad, max_exp_avg_sqs), false}}, scaling);
  check_group("AdaBelief", params, grads,
              {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  if (h.amsgrad) check_group("AdaBelief", params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}});
  check_steps("AdaBelief", steps, params.size());
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_sqs);
  const CompensatedWeights compensated_weights("AdaBelief", params, scaling);
  const auto inv_grad_scale = grad_unscale("AdaBelief", scaling);
  if (!inv_grad_scale) return;
  auto& scratch = fused_scratch();
  namespace adabelief = cpu::protocol::adabelief;
  if (!fused_group(scratch.group, params,
                   adabelief::Arrays<TensorList>{.param = params,
                                                 .grad = grads,
                                                 .exp_avg = exp_avgs,
                                                 .exp_avg_sq = exp_avg_sqs,
                                                 .max_exp_avg_sq = maxima})) {
    kernels::reference::adabelief(params, unscaled_grads(grads, *inv_grad_scale),
                                  exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, h);
    return;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  const auto decay = adabelief_weight_decay(h);
  args.constants.set(adabelief::Constants{.beta1 = h.beta1,
                                          .beta2 = h.beta2,
                                          .eps = h.eps,
                                          .weight_decay = decay.coupled,
                                          .amsgrad = h.amsgrad,
                                          .decay = decay.factor,
                                          .variance_eps = h.eps_in_variance ? h.eps : 0.0});
  for (size_t i = 0; i < params.size(); ++i) args.per_tensor[i].set(adabelief_step(h, steps[i]));
  cpu::run(h.rectify ? cpu::Pass::AdaBeliefRectifiedApply : cpu::Pass::AdaBeliefApply, scratch.group, args);
  mark_written({params, exp_avgs, exp_avg_sqs, maxima});
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

AdaBeliefOptions::AdaBeliefOptions(double lr) : lr_(lr) {}

functional::AdaBeliefHyper AdaBeliefOptions::hyper() const {
  return hyper_of<functional::AdaBeliefHyper>(*this);
}

AdaBelief::AdaBelief(const std::vector<OptimizerParamGroup>& param_groups,
                     AdaBeliefOptions defaults)
    : Algorithm(param_groups, defaults, "AdaBelief") {}
AdaBelief::AdaBelief(TensorVector params, AdaBeliefOptions defaults)
    : AdaBelief({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void AdaBelief::init_state(AdaBeliefParamState& state, const torch::Tensor& param,
                           const AdaBeliefOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param, options);
  detail::ensure_buffer(state.exp_avg_sq(), param, options);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_sq(), param, options);
}

void AdaBelief::update(const AdaBeliefOptions& options, const TensorVector& params,
                       const TensorVector& grads,
                       const std::vector<AdaBeliefParamState*>& states) {
  auto steps = next_steps(states);
  functional::adabelief_(
      params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
      gather(states, [](auto& s) { return s.exp_avg_sq(); }),
      options.amsgrad() ? gather(states, [](auto& s) { return s.max_exp_avg_sq(); }) : functional::detail::HeldTensors{},
      steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

c10::IValue adabelief(const Arguments& a) {
  const auto params = a.params();
  const StepCounters counters("AdaBelief", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::adabelief_(params, a.grads("AdaBelief", params), a.state("exp_avgs"), a.state("exp_avg_sqs"),
                a.state("max_exp_avg_sqs"), counters.steps(),
                a.hyper<F::AdaBeliefHyper>("AdaBelief"),
                a.scaling());
  counters.store(a.found_inf());
  return {};
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "adabelief_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
    "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, " HOLOCRON_SCALING
    ", Tensor(s!)[]? step_tensors=None, " HOLOCRON_MAXIMIZE ", bool decoupled_weight_decay=False, "
    "bool rectify=False, bool degenerated_to_sgd=True, bool fixed_decay=False, bool eps_in_variance=False, " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> ()",
    &adabelief)

}  // namespace holocron::optim::ops
