// RaLars: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/lamb.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/common.h"
#include "algorithms/trust_ratio.h"

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;
using namespace trust;

// Only this file's functional function calls them.
namespace {

namespace {

double default_sma_inf(const RaLarsHyper& h) { return h.sma_inf.value_or(2.0 / (1.0 - h.beta2) - 1.0); }

WeightDecay weight_decay_of(const RaLarsHyper& h) {
  return split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
}

}  // namespace

Sums ralars_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                 c10::ArrayRef<int64_t> steps, const RaLarsHyper& h) {
  return trust_sums(params, grads, exp_avgs, exp_avg_sqs, h.beta1, 1.0 - h.beta1, h.beta2,
                    RaLarsDirection{h, steps, default_sma_inf(h)});
}

void ralars(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            c10::ArrayRef<int64_t> steps, const RaLarsHyper& h, c10::ArrayRef<double> local_lrs) {
  trust_apply(params, grads, exp_avgs, exp_avg_sqs, h.beta1, 1.0 - h.beta1, h.beta2, h.lr, local_lrs,
              RaLarsDirection{h, steps, default_sma_inf(h)}, weight_decay_of(h).factor);
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

void check(const RaLarsHyper& h) {
  check_lamb_family("RaLars", h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.scale_clip);
  if (h.sma_inf) check_hyper("RaLars", "sma_inf", *h.sma_inf, -INFINITY, false, INFINITY, false);
}

std::vector<double> ralars_(TensorList params, TensorList grads, TensorList exp_avgs,
                            TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                            const RaLarsHyper& h, const GradScaling& scaling,
                            const Sharding& sharding) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("RaLars", {{"exp_avgs", exp_avgs, true},
                                                  {"exp_avg_sqs", exp_avg_sqs, false}}, scaling);
  check_group("RaLars", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  check_steps("RaLars", steps, params.size());
  check_sharding("RaLars", sharding, params);
  const CompensatedWeights compensated_weights("RaLars", params, scaling);
  const auto inv_grad_scale = grad_unscale("RaLars", scaling);
  if (!inv_grad_scale) return {};
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  const TrustRule rule{.clip = h.scale_clip, .p_norm_scale = std::abs(decay.factor)};
  auto& scratch = fused_scratch();
  const cpu::protocol::ralars::Arrays<TensorList> arrays{
      .param = params, .grad = grads, .exp_avg = exp_avgs, .exp_avg_sq = exp_avg_sqs};
  if (!fused_group(scratch.group, params, arrays)) {
    const auto g = unscaled_grads(grads, *inv_grad_scale);
    auto norms = kernels::reference::ralars_sums(params, g, exp_avgs, exp_avg_sqs, steps, h);
    all_reduce_sums("RaLars", sharding, norms, 2);
    const auto local_lrs = trust_ratios(norms, rule);
    kernels::reference::ralars(params, g, exp_avgs, exp_avg_sqs, steps, h, local_lrs);
    return local_lrs;
  }
  const double sma_inf = h.sma_inf.value_or(2.0 / (1.0 - h.beta2) - 1.0);
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(cpu::protocol::ralars::Constants{
      .beta1 = h.beta1, .beta2 = h.beta2, .eps = h.eps, .weight_decay = decay.coupled,
      .grad_weight = 1.0 - h.beta1, .decay = decay.factor});
  using Mode = cpu::protocol::ralars::Mode;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto t = static_cast<double>(steps[i]);
    const double bc1 = bias_correction(h.beta1, steps[i]);
    const double bc2 = bias_correction(h.beta2, steps[i]);
    const auto r = ralars_rectification(sma_inf, t, bc2);
    args.per_tensor[i].set(cpu::protocol::ralars::PerTensor{
        .inv_bc1 = 1.0 / bc1,
        .inv_bc2 = 1.0 / bc2,
        .rectification = r.value_or(1.0),
        .mode = r ? Mode::kRectified : h.force_adaptive_momentum ? Mode::kAdaptive : Mode::kMomentum,
        .step = 0.0});
  }
  auto local_lrs = fused_trust_step<cpu::protocol::ralars::PerTensor>(
      cpu::Pass::RaLarsMoments, cpu::Pass::RaLarsApply, scratch, "RaLars", h.lr, rule, sharding);
  mark_written({params, exp_avgs, exp_avg_sqs});
  return local_lrs;
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

RaLarsOptions::RaLarsOptions(double lr) : lr_(lr) {}

functional::RaLarsHyper RaLarsOptions::hyper() const {
  // No option holds sma_inf: none, the math then takes 2 / (1 - beta2) - 1 (only the operator is
  // handed one, by a group that fixed it as the reference does).
  return hyper_of<functional::RaLarsHyper>(*this, {"sma_inf"});
}

RaLars::RaLars(const std::vector<OptimizerParamGroup>& param_groups, RaLarsOptions defaults)
    : Algorithm(param_groups, defaults, "RaLars") {}
RaLars::RaLars(TensorVector params, RaLarsOptions defaults)
    : RaLars({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void RaLars::init_state(RaLarsParamState& state, const torch::Tensor& param,
                        const RaLarsOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param, options);
  detail::ensure_buffer(state.exp_avg_sq(), param, options);
}

void RaLars::update(const RaLarsOptions& options, const TensorVector& params,
                    const TensorVector& grads, const std::vector<RaLarsParamState*>& states) {
  auto steps = next_steps(states);
  auto local_lrs =
      functional::ralars_(params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
                          gather(states, [](auto& s) { return s.exp_avg_sq(); }), steps,
                          options.hyper(), grad_scaling());
  store_steps(states, steps);
  for (size_t i = 0; i < states.size(); ++i) states[i]->local_lr(local_lrs[i]);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

c10::IValue ralars(const Arguments& a) {
  const auto params = a.params();
  const StepCounters counters("RaLars", a.integers("steps"), a.optional_tensors("step_tensors"),
                              params.size());
  const auto local_lrs = a.optional_state("local_lrs");
  check_ratio_targets("RaLars", local_lrs, params.size());
  const auto ratios = F::ralars_(
      params, a.grads("RaLars", params), a.state("exp_avgs"), a.state("exp_avg_sqs"), counters.steps(),
      a.hyper<F::RaLarsHyper>("RaLars"),
      a.scaling(), a.sharding(params));
  store_ratios(local_lrs, ratios);
  counters.store(a.found_inf());
  return ratios_out(ratios, params);
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "ralars_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, int[] steps, float lr, float beta1, float beta2, float eps, "
    "float weight_decay, bool force_adaptive_momentum, float clip_low, float clip_high, "
    "float? sma_inf=None, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING
    ", Tensor(s!)[]? step_tensors=None, Tensor(l!)[]? local_lrs=None, " HOLOCRON_MAXIMIZE
    ", bool decoupled_weight_decay=False, " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> Tensor",
    &ralars)

}  // namespace holocron::optim::ops
