// Adan: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/adan.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/caution.h"
#include "algorithms/common.h"

namespace holocron::optim::functional::detail {
namespace {
// The weight decay inside the gradient (none when decoupled), and the factors the parameter is
// multiplied by before the update (no_prox) and divided by after it (the proximal step); 1: none.
double adan_coupled_decay(const AdanHyper& h) { return h.decoupled_weight_decay ? 0.0 : h.weight_decay; }
double adan_decay_factor(const AdanHyper& h) { return h.no_prox ? 1.0 - h.weight_decay * h.lr : 1.0; }
double adan_decay_divisor(const AdanHyper& h) { return h.no_prox ? 1.0 : 1.0 + h.weight_decay * h.lr; }
}  // namespace
}  // namespace holocron::optim::functional::detail

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

// Only this file's functional function calls them.
namespace {

void adan(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
           TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
           c10::ArrayRef<int64_t> steps, const AdanHyper& h, c10::ArrayRef<double> caution_scales) {

  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, adan_coupled_decay(h));
    auto prev = scope.inout(prev_grads[i]);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    auto n = scope.inout(exp_avg_deltas[i]);

    // Unlike pylocron: the gradient difference is taken against the previous step's
    // gradient, and is zero on the first step.
    auto diff = steps[i] == 1 ? at::zeros_like(g) : g - prev;
    m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
    v.mul_(h.beta2).add_(diff, 1.0 - h.beta2);
    auto corrected = g + h.beta2 * diff;
    n.mul_(h.beta3).addcmul_(corrected, corrected, 1.0 - h.beta3);
    prev.copy_(g);

    auto denom = adam_denominator(scope, n, h.amsgrad, max_exp_avg_deltas, i,
                                  bias_correction(h.beta3, steps[i]), h.eps);
    auto momentum = m / bias_correction(h.beta1, steps[i]);
    if (h.caution) momentum = at::where(m * g > 0, momentum * caution_scales[i], at::zeros_like(momentum));
    auto direction = momentum.add_(v, h.beta2 / bias_correction(h.beta2, steps[i])).div_(denom);
    if (const double factor = adan_decay_factor(h); factor != 1.0) p.mul_(factor);
    p.add_(direction, -h.lr);
    if (const double divisor = adan_decay_divisor(h); divisor != 1.0) p.div_(divisor);
    scope.commit();
  }
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

void check(const AdanHyper& h) {
  check_adam_like("Adan", h.lr, {h.beta1, h.beta2, h.beta3}, h.eps, h.weight_decay);
}

void adan_(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
           TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
           c10::ArrayRef<int64_t> steps, const AdanHyper& h, const GradScaling& scaling,
           const Sharding& sharding) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("Adan", {{"exp_avgs", exp_avgs, true},
                                                {"exp_avg_sqs", exp_avg_sqs, true},
                                                {"exp_avg_deltas", exp_avg_deltas, false},
                                                {"max_exp_avg_deltas", if_used(h.amsgrad, max_exp_avg_deltas), false}}, scaling);
  check_group("Adan", params, grads,
              {{"prev_grads", prev_grads},
               {"exp_avgs", exp_avgs},
               {"exp_avg_sqs", exp_avg_sqs},
               {"exp_avg_deltas", exp_avg_deltas}});
  if (h.amsgrad) check_group("Adan", params, grads, {{"max_exp_avg_deltas", max_exp_avg_deltas}});
  check_steps("Adan", steps, params.size());
  check_sharding("Adan", sharding, params);
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_deltas);
  // The authors' clipping rule, min(max_grad_norm / (norm + eps), 1).
  const CompensatedWeights compensated_weights("Adan", params, scaling);
  const auto inv_grad_scale = grad_unscale("Adan", scaling, h.eps);
  if (!inv_grad_scale) return;
  // timm's rescaling of the kept elements.
  const auto caution_scales =
      h.caution ? caution_scales_of("Adan", CautionScale::kTimm, params, grads, exp_avgs, h.beta1, 1.0 - h.beta1,
                                    adan_coupled_decay(h), *inv_grad_scale, sharding)
                : std::vector<double>(params.size(), 1.0);
  auto& scratch = fused_scratch();
  namespace adan = cpu::protocol::adan;
  if (!fused_group(scratch.group, params,
                   adan::Arrays<TensorList>{.param = params,
                                            .grad = grads,
                                            .prev_grad = prev_grads,
                                            .exp_avg = exp_avgs,
                                            .exp_avg_sq = exp_avg_sqs,
                                            .exp_avg_delta = exp_avg_deltas,
                                            .max_exp_avg_delta = maxima})) {
    kernels::reference::adan(params, unscaled_grads(grads, *inv_grad_scale),
                             prev_grads, exp_avgs, exp_avg_sqs, exp_avg_deltas,
                             max_exp_avg_deltas, steps, h, caution_scales);
    return;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(adan::Constants{.beta1 = h.beta1,
                                     .beta2 = h.beta2,
                                     .beta3 = h.beta3,
                                     .eps = h.eps,
                                     .weight_decay = adan_coupled_decay(h),
                                     .amsgrad = h.amsgrad,
                                     .caution = h.caution});
  for (size_t i = 0; i < params.size(); ++i) {
    args.per_tensor[i].set(adan::PerTensor{.first_step = steps[i] == 1,
                                           .inv_bc1 = 1.0 / bias_correction(h.beta1, steps[i]),
                                           .beta2_over_bc2 = h.beta2 / bias_correction(h.beta2, steps[i]),
                                           .inv_sqrt_bc3 = inverse_sqrt_bias_correction(h.beta3, steps[i]),
                                           .step = -h.lr,
                                           .decay_factor = adan_decay_factor(h),
                                           .decay_divisor = adan_decay_divisor(h),
                                           .caution_scale = caution_scales[i]});
  }
  cpu::run(cpu::Pass::AdanApply, scratch.group, args);
  mark_written({params, prev_grads, exp_avgs, exp_avg_sqs, exp_avg_deltas, maxima});
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

AdanOptions::AdanOptions(double lr) : lr_(lr) {}

functional::AdanHyper AdanOptions::hyper() const {
  return hyper_of<functional::AdanHyper>(*this);
}

Adan::Adan(const std::vector<OptimizerParamGroup>& param_groups, AdanOptions defaults)
    : Algorithm(param_groups, defaults, "Adan") {}
Adan::Adan(TensorVector params, AdanOptions defaults)
    : Adan({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void Adan::init_state(AdanParamState& state, const torch::Tensor& param,
                      const AdanOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param, options);
  detail::ensure_buffer(state.exp_avg_sq(), param, options);
  detail::ensure_buffer(state.exp_avg_delta(), param, options);
  detail::ensure_buffer(state.prev_grad(), param, options);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_delta(), param, options);
}

void Adan::update(const AdanOptions& options, const TensorVector& params, const TensorVector& grads,
                  const std::vector<AdanParamState*>& states) {
  auto steps = next_steps(states);
  functional::adan_(params, grads, gather(states, [](auto& s) { return s.prev_grad(); }),
                    gather(states, [](auto& s) { return s.exp_avg(); }),
                    gather(states, [](auto& s) { return s.exp_avg_sq(); }),
                    gather(states, [](auto& s) { return s.exp_avg_delta(); }),
                    options.amsgrad()
                        ? gather(states, [](auto& s) { return s.max_exp_avg_delta(); })
                        : functional::detail::HeldTensors{},
                    steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

c10::IValue adan(const Arguments& a) {
  const auto params = a.params();
  const StepCounters counters("Adan", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::adan_(params, a.grads("Adan", params), a.state("prev_grads"), a.state("exp_avgs"),
           a.state("exp_avg_sqs"), a.state("exp_avg_deltas"), a.state("max_exp_avg_deltas"),
           counters.steps(),
           a.hyper<F::AdanHyper>("Adan"),
           a.scaling(), a.sharding(params));
  counters.store(a.found_inf());
  return {};
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "adan_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] prev_grads, "
    "Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] exp_avg_deltas, "
    "Tensor(f!)[] max_exp_avg_deltas, int[] steps, float lr, float beta1, float beta2, "
    "float beta3, float eps, float weight_decay, bool amsgrad, " HOLOCRON_SCALING
    ", Tensor(s!)[]? step_tensors=None, " HOLOCRON_MAXIMIZE
    ", bool decoupled_weight_decay=False, bool no_prox=False, " HOLOCRON_CLIPPING
    ", bool caution=False, " HOLOCRON_SHARDING ", " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> ()",
    &adan)

}  // namespace holocron::optim::ops
