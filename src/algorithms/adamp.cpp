// AdamP: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/adamp.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/common.h"

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

// Only this file's functional function calls them.
namespace {

namespace {

void adamp_moments(at::Tensor& m, at::Tensor& v, const at::Tensor& g, const AdamPHyper& h) {
  m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
}

// Adam's step m_hat / (sqrt(v_hat) + eps), given the denominator.
at::Tensor adamp_direction(const at::Tensor& m, const at::Tensor& denominator, int64_t step,
                           const AdamPHyper& h) {
  return (m / bias_correction(h.beta1, step)).div_(denominator);
}

}  // namespace

Sums adamp_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h) {
  Sums sums(params.size(), Sums::value_type{});
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.in(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay).coupled);
    auto m = scope.in(exp_avgs[i]).clone();
    auto v = scope.in(exp_avg_sqs[i]).clone();
    adamp_moments(m, v, g, h);
    // This phase writes nothing: the running maximum too is taken aside.
    auto second = h.amsgrad ? at::maximum(scope.in(max_exp_avg_sqs[i]), v) : v;
    auto q = adamp_direction(m, denominator_of(second, bias_correction(h.beta2, steps[i]), h.eps),
                             steps[i], h);
    sums[i] = {dot_of(p, g), squared_norm_of(p), squared_norm_of(g), dot_of(p, q)};
  }
  return sums;
}

void adamp(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h,
           c10::ArrayRef<double> projections) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
    auto g = decayed_grad(scope.in(grads[i]), p, decay.coupled);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    adamp_moments(m, v, g, h);
    auto q = adamp_direction(m, adam_denominator(scope, v, h.amsgrad, max_exp_avg_sqs, i,
                                                 bias_correction(h.beta2, steps[i]), h.eps),
                             steps[i], h);
    // Where the weight is nearly orthogonal to its gradient (scale-invariant
    // weights), the radial part of the update was found and is removed (of the decayed weight).
    if (decay.factor != 1.0) p.mul_(decay.factor);
    if (projections[i] != 0.0) q.sub_(p, projections[i]);
    p.add_(q, -h.lr);
    scope.commit();
  }
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

namespace {

constexpr double kCosineEps = 1e-8;  // torch.nn.functional.cosine_similarity's default

}  // namespace

void check(const AdamPHyper& h) {
  check_adam_like("AdamP", h.lr, {h.beta1, h.beta2}, h.eps, h.weight_decay);
  check_hyper("AdamP", "delta", h.delta, -INFINITY, false, INFINITY, false);
}

void adamp_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h,
            const GradScaling& scaling, const Sharding& sharding) {
  check(h);
  check_group("AdamP", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  if (h.amsgrad) check_group("AdamP", params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}});
  check_steps("AdamP", steps, params.size());
  check_sharding("AdamP", sharding, params);
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_sqs);
  const auto inv_grad_scale = grad_unscale("AdamP", scaling);
  if (!inv_grad_scale) return;
  auto& scratch = fused_scratch();
  namespace adamp = cpu::protocol::adamp;
  const bool fused = fused_group(scratch.group, params,
                                 adamp::Arrays<TensorList>{.param = params,
                                                           .grad = grads,
                                                           .exp_avg = exp_avgs,
                                                           .exp_avg_sq = exp_avg_sqs,
                                                           .max_exp_avg_sq = maxima});
  const auto reference_grads = fused ? std::vector<at::Tensor>{} : unscaled_grads(grads, *inv_grad_scale);
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  args.constants.set(adamp::Constants{.beta1 = h.beta1,
                                      .beta2 = h.beta2,
                                      .eps = h.eps,
                                      .weight_decay = decay.coupled,
                                      .amsgrad = h.amsgrad,
                                      .decay = decay.factor});
  // The step and the projection are known after pass 1.
  for (size_t i = 0; i < params.size(); ++i) {
    args.per_tensor[i].set(adamp::PerTensor{.inv_bc1 = 1.0 / bias_correction(h.beta1, steps[i]),
                                            .inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                                            .step = 0.0,
                                            .projection = 0.0});
  }
  auto& sums = scratch.sums;  // p.g, |p|^2, |g|^2, p.q
  if (fused) {
    cpu::run(cpu::Pass::AdamPMoments, scratch.group, args, &sums);
  } else {
    sums = kernels::reference::adamp_sums(params, reference_grads, exp_avgs, exp_avg_sqs,
                                          max_exp_avg_sqs, steps, h);
  }
  all_reduce_sums("AdamP", sharding, sums, 4);
  std::vector<double> projections(params.size(), 0.0);
  for (size_t i = 0; i < params.size(); ++i) {
    // Of the decayed parameter, whose sums are the parameter's times the factor (exact when 1).
    const double p_norm = std::sqrt(sums[i][1]) * std::abs(decay.factor);
    const double cosine = sums[i][0] * decay.factor /
                          (std::max(p_norm, kCosineEps) * std::max(std::sqrt(sums[i][2]), kCosineEps));
    const int64_t numel = whole_numel(sharding, params, i);
    if (numel > 0 && cosine < adamp_threshold(h.delta, numel)) {
      // q - (n.q) n with n = p / (||p|| + eps), as a multiple of p.
      projections[i] = sums[i][3] * decay.factor / ((p_norm + h.eps) * (p_norm + h.eps));
    }
    auto row = args.per_tensor[i].get<adamp::PerTensor>();
    row.step = -h.lr;
    row.projection = projections[i];
    args.per_tensor[i].set(row);
  }
  if (!fused) {
    kernels::reference::adamp(params, reference_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                              steps, h, projections);
    return;
  }
  cpu::run(cpu::Pass::AdamPApply, scratch.group, args);
  mark_written({params, exp_avgs, exp_avg_sqs, maxima});
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

AdamPOptions::AdamPOptions(double lr) : lr_(lr) {}

functional::AdamPHyper AdamPOptions::hyper() const {
  return {.lr = lr(),
          .beta1 = std::get<0>(betas()),
          .beta2 = std::get<1>(betas()),
          .eps = eps(),
          .weight_decay = weight_decay(),
          .amsgrad = amsgrad(),
          .delta = delta(),
          .decoupled_weight_decay = decoupled_weight_decay()};
}

AdamP::AdamP(const std::vector<OptimizerParamGroup>& param_groups, AdamPOptions defaults)
    : Algorithm(param_groups, defaults, "AdamP") {}
AdamP::AdamP(TensorVector params, AdamPOptions defaults)
    : AdamP({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void AdamP::init_state(AdamPParamState& state, const torch::Tensor& param,
                       const AdamPOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param);
  detail::ensure_buffer(state.exp_avg_sq(), param);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_sq(), param);
}

void AdamP::update(const AdamPOptions& options, const TensorVector& params,
                   const TensorVector& grads, const std::vector<AdamPParamState*>& states) {
  auto steps = next_steps(states);
  functional::adamp_(
      params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
      gather(states, [](auto& s) { return s.exp_avg_sq(); }),
      options.amsgrad() ? gather(states, [](auto& s) { return s.max_exp_avg_sq(); }) : TensorVector{},
      steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

c10::IValue adamp(const Arguments& a) {
  const auto params = a.tensors("params");
  const StepCounters counters("AdamP", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::adamp_(params, a.tensors("grads"), a.tensors("exp_avgs"), a.tensors("exp_avg_sqs"),
            a.tensors("max_exp_avg_sqs"), counters.steps(),
            {.lr = a.real("lr"), .beta1 = a.real("beta1"), .beta2 = a.real("beta2"),
             .eps = a.real("eps"), .weight_decay = a.real("weight_decay"),
             .amsgrad = a.flag("amsgrad"), .delta = a.real("delta"),
             .decoupled_weight_decay = a.flag("decoupled_weight_decay")},
            a.scaling(), a.sharding(params));
  counters.store(a.found_inf());
  return {};
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "adamp_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, int[] steps, float lr, "
    "float beta1, float beta2, float eps, float weight_decay, bool amsgrad, float delta, "
     HOLOCRON_SCALING ", " HOLOCRON_SHARDING ", Tensor(s!)[]? step_tensors=None, " HOLOCRON_MAXIMIZE
     ", bool decoupled_weight_decay=False) -> ()",
    &adamp)

}  // namespace holocron::optim::ops
