// TAdam: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/tadam.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/common.h"

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

// Only this file's functional function calls them.
namespace {

Sums tadam_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                const TAdamHyper& h) {
  Sums sums(params.size(), Sums::value_type{});
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), scope.in(params[i]), split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay).coupled);
    // The Mahalanobis distance of this gradient from the moments before this step.
    sums[i][0] = (g - scope.in(exp_avgs[i])).pow_(2).div_(scope.in(exp_avg_sqs[i]) + h.eps)
                     .sum(at::kDouble).item<double>();
  }
  return sums;
}

void tadam(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<std::array<double, 2>> mixing,
           c10::ArrayRef<int64_t> steps, const TAdamHyper& h) {
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, decay.coupled);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    m.mul_(mixing[i][0]).add_(g, mixing[i][1]);
    v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
    auto denom = adam_denominator(scope, v, h.amsgrad, max_exp_avg_sqs, i,
                                  bias_correction(h.beta2, steps[i]), h.eps);
    if (decay.factor != 1.0) p.mul_(decay.factor);
    p.addcdiv_(m, denom, -h.lr / bias_correction(h.beta1, steps[i]));
    scope.commit();
  }
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

void check(const TAdamHyper& h) {
  check_adam_like("TAdam", h.lr, {h.beta1, h.beta2}, h.eps, h.weight_decay);
  // dof = 0 turns a step whose gradient equals the mean into inf / inf (NaN
  // weights, NaN parameters); the reference accepts it.
  if (h.dof) check_hyper("TAdam", "dof", *h.dof, 0.0, false, INFINITY, false);
}

void tadam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, std::vector<double>& moment_weights,
            c10::ArrayRef<int64_t> steps, const TAdamHyper& h, const GradScaling& scaling,
            const Sharding& sharding) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("TAdam", {{"exp_avgs", exp_avgs, true},
                                                 {"exp_avg_sqs", exp_avg_sqs, false},
                                                 {"max_exp_avg_sqs", if_used(h.amsgrad, max_exp_avg_sqs), false}}, scaling);
  check_group("TAdam", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  if (h.amsgrad) check_group("TAdam", params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}});
  check_steps("TAdam", steps, params.size());
  check_sharding("TAdam", sharding, params);
  TORCH_CHECK(moment_weights.size() == params.size(), "TAdam: got ", moment_weights.size(),
              " moment weights for ", params.size(), " parameters");
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_sqs);
  const CompensatedWeights compensated_weights("TAdam", params, scaling);
  const auto inv_grad_scale = grad_unscale("TAdam", scaling);
  if (!inv_grad_scale) return;
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  auto& scratch = fused_scratch();
  namespace tadam = cpu::protocol::tadam;
  const bool fused =
      fused_group(scratch.second_group, params,
                  tadam::DistanceArrays<TensorList>{.grad = grads,
                                                    .exp_avg = exp_avgs,
                                                    .exp_avg_sq = exp_avg_sqs,
                                                    .param = if_used(decay.coupled != 0.0, params)}) &&
      fused_group(scratch.group, params,
                  tadam::ApplyArrays<TensorList>{.param = params,
                                                 .grad = grads,
                                                 .exp_avg = exp_avgs,
                                                 .exp_avg_sq = exp_avg_sqs,
                                                 .max_exp_avg_sq = maxima});
  auto& distances = scratch.sums;
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(
      tadam::ApplyConstants{.beta2 = h.beta2,
                            .eps = h.eps,
                            .weight_decay = decay.coupled,
                            .amsgrad = h.amsgrad,
                            .decay = decay.factor});
  std::vector<std::array<double, 2>> mixing(params.size());
  // Tensor t's weight of this gradient from its distance (over all shards), and the moment weight.
  const auto weigh = [&](int64_t t, const std::array<double, cpu::kMaxSums>& distance) {
    const auto i = static_cast<size_t>(t);
    const int64_t numel = whole_numel(sharding, params, i);
    if (numel == 0) return;  // nothing to weigh: W stays
    const double w = tadam_weight(h.dof, numel, distance[0]);
    double& W = moment_weights[i];
    mixing[i] = {W / (W + w), w / (W + w)};
    args.per_tensor[i].set(tadam::ApplyPerTensor{.keep = mixing[i][0],
                                                 .take = mixing[i][1],
                                                 .inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                                                 .step = -h.lr / bias_correction(h.beta1, steps[i])});
    W = next_moment_weight(W, h.beta1, w, params[i].scalar_type());
  };
  if (fused) {
    cpu::PassArgs distance_args;
    distance_args.inv_grad_scale = *inv_grad_scale;
    distance_args.constants.set(tadam::DistanceConstants{.eps = h.eps, .weight_decay = decay.coupled});
    two_passes("TAdam", sharding, 1, {cpu::Pass::TAdamDistance, scratch.second_group, distance_args},
               {cpu::Pass::TAdamApply, scratch.group, args}, distances, weigh);
    mark_written({params, exp_avgs, exp_avg_sqs, maxima});
    return;
  }
  const auto reference_grads = unscaled_grads(grads, *inv_grad_scale);
  distances = kernels::reference::tadam_sums(params, reference_grads, exp_avgs, exp_avg_sqs, h);
  all_reduce_sums("TAdam", sharding, distances, 1);
  for (size_t i = 0; i < params.size(); ++i) weigh(static_cast<int64_t>(i), distances[i]);
  kernels::reference::tadam(params, reference_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, mixing, steps, h);
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

TAdamOptions::TAdamOptions(double lr) : lr_(lr) {}

functional::TAdamHyper TAdamOptions::hyper() const {
  return hyper_of<functional::TAdamHyper>(*this);
}

TAdam::TAdam(const std::vector<OptimizerParamGroup>& param_groups, TAdamOptions defaults)
    : Algorithm(param_groups, defaults, "TAdam") {}
TAdam::TAdam(TensorVector params, TAdamOptions defaults)
    : TAdam({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void TAdam::init_state(TAdamParamState& state, const torch::Tensor& param,
                       const TAdamOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param, options);
  detail::ensure_buffer(state.exp_avg_sq(), param, options);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_sq(), param, options);
  if (state.step() == 0) {
    const double beta1 = std::get<0>(options.betas());
    state.W_t(beta1 / (1.0 - beta1));
  }
}

void TAdam::update(const TAdamOptions& options, const TensorVector& params,
                   const TensorVector& grads, const std::vector<TAdamParamState*>& states) {
  auto steps = next_steps(states);
  std::vector<double> weights(states.size());
  for (size_t i = 0; i < states.size(); ++i) weights[i] = states[i]->W_t();
  functional::tadam_(params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
                     gather(states, [](auto& s) { return s.exp_avg_sq(); }),
                     options.amsgrad() ? gather(states, [](auto& s) { return s.max_exp_avg_sq(); })
                                       : functional::detail::HeldTensors{},
                     weights, steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
  for (size_t i = 0; i < states.size(); ++i) states[i]->W_t(weights[i]);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

// The reference keeps TAdam's moment weight as a one-element tensor (W_t).
c10::IValue tadam(const Arguments& a) {
  const auto params = a.params();
  const auto W_ts = a.state("W_ts");
  TORCH_CHECK(W_ts.size() == params.size(), "TAdam: got ", W_ts.size(), " W_t for ",
              params.size(), " parameters");
  auto weights = read_scalars(W_ts, [&](size_t i) {
    TORCH_CHECK(W_ts[i].numel() == 1, "TAdam: W_t of parameter ", i,
                " must hold one element, it has shape ", W_ts[i].sizes());
    TORCH_CHECK(W_ts[i].scalar_type() == params[i].scalar_type() &&
                    W_ts[i].device() == params[i].device(),
                "TAdam: state 'W_t' of parameter ", i, " must be a one-element tensor of dtype ",
                params[i].scalar_type(), " on ", params[i].device(), ", got ",
                W_ts[i].scalar_type(), " on ", W_ts[i].device());
  });
  const StepCounters counters("TAdam", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  F::tadam_(params, a.grads("TAdam", params), a.state("exp_avgs"), a.state("exp_avg_sqs"),
            a.state("max_exp_avg_sqs"), weights, counters.steps(),
            a.hyper<F::TAdamHyper>("TAdam"),
            a.scaling(), a.sharding(params));
  for (size_t i = 0; i < W_ts.size(); ++i) {
    F::detail::prefetch_values(W_ts, i);
    write_scalar(W_ts[i], weights[i]);
  }
  counters.store(a.found_inf());
  return {};
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "tadam_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] W_ts, int[] steps, "
    "float lr, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, "
    "float? dof, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING
    ", Tensor(s!)[]? step_tensors=None, " HOLOCRON_MAXIMIZE ", bool decoupled_weight_decay=False, " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> ()",
    &tadam)

}  // namespace holocron::optim::ops
