// The eight algorithm classes: options to hyper-parameters, state creation,
// and one functional call per group. The math is in src/functional.

#include <tuple>

#include "holocron/optim.h"

namespace holocron::optim {

namespace {

using torch::optim::OptimizerParamGroup;
using TensorVector = std::vector<torch::Tensor>;

constexpr double kDefaultClipLow = 0.0;
constexpr double kDefaultClipHigh = 10.0;

functional::ScaleClip to_clip(const std::tuple<double, double>& clip) {
  return {std::get<0>(clip), std::get<1>(clip)};
}

functional::ScaleClip clip_or_default(const scale_clip_t& clip) {
  return clip ? to_clip(*clip) : functional::ScaleClip{kDefaultClipLow, kDefaultClipHigh};
}

// Step counters after this step's increment; written back only once the
// functional call has succeeded.
template <typename State>
std::vector<int64_t> next_steps(const std::vector<State*>& states) {
  std::vector<int64_t> steps(states.size());
  for (size_t i = 0; i < states.size(); ++i) steps[i] = states[i]->step() + 1;
  return steps;
}

template <typename State>
void store_steps(const std::vector<State*>& states, const std::vector<int64_t>& steps) {
  for (size_t i = 0; i < states.size(); ++i) states[i]->step(steps[i]);
}

// One list per state buffer, in parameter order.
template <typename State, typename Getter>
TensorVector gather(const std::vector<State*>& states, Getter getter) {
  TensorVector out;
  out.reserve(states.size());
  for (auto* s : states) out.push_back(getter(*s));
  return out;
}

}  // namespace

// ---- LARS -----------------------------------------------------------------

LARSOptions::LARSOptions(double lr) : lr_(lr) {}

functional::LarsHyper LARSOptions::hyper() const {
  std::optional<functional::ScaleClip> clip;
  if (scale_clip()) clip = to_clip(*scale_clip());
  return {lr(), momentum(), dampening(), weight_decay(), nesterov(), clip};
}

LARS::LARS(const std::vector<OptimizerParamGroup>& param_groups, LARSOptions defaults)
    : Algorithm(param_groups, defaults, "LARS") {}
LARS::LARS(TensorVector params, LARSOptions defaults)
    : LARS({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void LARS::init_state(LARSParamState&, const torch::Tensor&, const LARSOptions&) const {
  // The momentum buffer starts as the first step's direction: created in update().
}

void LARS::update(const LARSOptions& options, const TensorVector& params, const TensorVector& grads,
                  const std::vector<LARSParamState*>& states) {
  const size_t n = states.size();
  TensorVector buffers;
  std::unique_ptr<bool[]> is_new(new bool[n]());
  if (options.momentum() != 0.0) {
    for (size_t i = 0; i < n; ++i) {
      auto& buffer = states[i]->momentum_buffer();
      is_new[i] = !buffer.defined();
      detail::ensure_buffer(buffer, params[i]);
      buffers.push_back(buffer);
    }
  }
  std::vector<double> local_lrs;
  try {
    local_lrs = functional::lars_(params, grads, buffers, c10::ArrayRef<bool>(is_new.get(), n),
                                  options.hyper(), grad_scaling());
  } catch (...) {
    // A buffer created for this step must not outlive a failed one.
    for (size_t i = 0; i < n; ++i) {
      if (is_new[i]) states[i]->momentum_buffer(torch::Tensor());
    }
    throw;
  }
  for (size_t i = 0; i < states.size(); ++i) states[i]->local_lr(local_lrs[i]);
}

// ---- LAMB -----------------------------------------------------------------

LAMBOptions::LAMBOptions(double lr) : lr_(lr) {}

functional::LambHyper LAMBOptions::hyper() const {
  return {lr(), std::get<0>(betas()), std::get<1>(betas()), eps(), weight_decay(),
          clip_or_default(scale_clip())};
}

LAMB::LAMB(const std::vector<OptimizerParamGroup>& param_groups, LAMBOptions defaults)
    : Algorithm(param_groups, defaults, "LAMB") {}
LAMB::LAMB(TensorVector params, LAMBOptions defaults)
    : LAMB({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void LAMB::init_state(LAMBParamState& state, const torch::Tensor& param,
                      const LAMBOptions&) const {
  detail::ensure_buffer(state.exp_avg(), param);
  detail::ensure_buffer(state.exp_avg_sq(), param);
}

void LAMB::update(const LAMBOptions& options, const TensorVector& params, const TensorVector& grads,
                  const std::vector<LAMBParamState*>& states) {
  auto local_lrs = functional::lamb_(params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
                                     gather(states, [](auto& s) { return s.exp_avg_sq(); }),
                                     options.hyper(), grad_scaling());
  store_steps(states, next_steps(states));
  for (size_t i = 0; i < states.size(); ++i) states[i]->local_lr(local_lrs[i]);
}

// ---- RaLars ---------------------------------------------------------------

RaLarsOptions::RaLarsOptions(double lr) : lr_(lr) {}

functional::RaLarsHyper RaLarsOptions::hyper() const {
  return {lr(), std::get<0>(betas()), std::get<1>(betas()), eps(), weight_decay(),
          force_adaptive_momentum(), clip_or_default(scale_clip()), std::nullopt};
}

RaLars::RaLars(const std::vector<OptimizerParamGroup>& param_groups, RaLarsOptions defaults)
    : Algorithm(param_groups, defaults, "RaLars") {}
RaLars::RaLars(TensorVector params, RaLarsOptions defaults)
    : RaLars({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void RaLars::init_state(RaLarsParamState& state, const torch::Tensor& param,
                        const RaLarsOptions&) const {
  detail::ensure_buffer(state.exp_avg(), param);
  detail::ensure_buffer(state.exp_avg_sq(), param);
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

// ---- TAdam ----------------------------------------------------------------

TAdamOptions::TAdamOptions(double lr) : lr_(lr) {}

functional::TAdamHyper TAdamOptions::hyper() const {
  return {lr(), std::get<0>(betas()), std::get<1>(betas()), eps(), weight_decay(), amsgrad(), dof()};
}

TAdam::TAdam(const std::vector<OptimizerParamGroup>& param_groups, TAdamOptions defaults)
    : Algorithm(param_groups, defaults, "TAdam") {}
TAdam::TAdam(TensorVector params, TAdamOptions defaults)
    : TAdam({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void TAdam::init_state(TAdamParamState& state, const torch::Tensor& param,
                       const TAdamOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param);
  detail::ensure_buffer(state.exp_avg_sq(), param);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_sq(), param);
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
                                       : TensorVector{},
                     weights, steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
  for (size_t i = 0; i < states.size(); ++i) states[i]->W_t(weights[i]);
}

// ---- AdaBelief ------------------------------------------------------------

AdaBeliefOptions::AdaBeliefOptions(double lr) : lr_(lr) {}

functional::AdaBeliefHyper AdaBeliefOptions::hyper() const {
  return {lr(), std::get<0>(betas()), std::get<1>(betas()), eps(), weight_decay(), amsgrad()};
}

AdaBelief::AdaBelief(const std::vector<OptimizerParamGroup>& param_groups,
                     AdaBeliefOptions defaults)
    : Algorithm(param_groups, defaults, "AdaBelief") {}
AdaBelief::AdaBelief(TensorVector params, AdaBeliefOptions defaults)
    : AdaBelief({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void AdaBelief::init_state(AdaBeliefParamState& state, const torch::Tensor& param,
                           const AdaBeliefOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param);
  detail::ensure_buffer(state.exp_avg_sq(), param);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_sq(), param);
}

void AdaBelief::update(const AdaBeliefOptions& options, const TensorVector& params,
                       const TensorVector& grads,
                       const std::vector<AdaBeliefParamState*>& states) {
  auto steps = next_steps(states);
  functional::adabelief_(
      params, grads, gather(states, [](auto& s) { return s.exp_avg(); }),
      gather(states, [](auto& s) { return s.exp_avg_sq(); }),
      options.amsgrad() ? gather(states, [](auto& s) { return s.max_exp_avg_sq(); }) : TensorVector{},
      steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
}

// ---- AdamP ----------------------------------------------------------------

AdamPOptions::AdamPOptions(double lr) : lr_(lr) {}

functional::AdamPHyper AdamPOptions::hyper() const {
  return {lr(), std::get<0>(betas()), std::get<1>(betas()), eps(), weight_decay(), amsgrad(),
          delta()};
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

// ---- Adan -----------------------------------------------------------------

AdanOptions::AdanOptions(double lr) : lr_(lr) {}

functional::AdanHyper AdanOptions::hyper() const {
  return {lr(), std::get<0>(betas()), std::get<1>(betas()), std::get<2>(betas()), eps(),
          weight_decay(), amsgrad()};
}

Adan::Adan(const std::vector<OptimizerParamGroup>& param_groups, AdanOptions defaults)
    : Algorithm(param_groups, defaults, "Adan") {}
Adan::Adan(TensorVector params, AdanOptions defaults)
    : Adan({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void Adan::init_state(AdanParamState& state, const torch::Tensor& param,
                      const AdanOptions& options) const {
  detail::ensure_buffer(state.exp_avg(), param);
  detail::ensure_buffer(state.exp_avg_sq(), param);
  detail::ensure_buffer(state.exp_avg_delta(), param);
  detail::ensure_buffer(state.prev_grad(), param);
  if (options.amsgrad()) detail::ensure_buffer(state.max_exp_avg_delta(), param);
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
                        : TensorVector{},
                    steps, options.hyper(), grad_scaling());
  store_steps(states, steps);
}

// ---- AdEMAMix -------------------------------------------------------------

AdEMAMixOptions::AdEMAMixOptions(double lr) : lr_(lr) {}

functional::AdEMAMixHyper AdEMAMixOptions::hyper() const {
  return {lr(),  std::get<0>(betas()), std::get<1>(betas()), std::get<2>(betas()),
          alpha(), eps(), weight_decay()};
}

AdEMAMix::AdEMAMix(const std::vector<OptimizerParamGroup>& param_groups, AdEMAMixOptions defaults)
    : Algorithm(param_groups, defaults, "AdEMAMix") {}
AdEMAMix::AdEMAMix(TensorVector params, AdEMAMixOptions defaults)
    : AdEMAMix({OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void AdEMAMix::init_state(AdEMAMixParamState& state, const torch::Tensor& param,
                          const AdEMAMixOptions&) const {
  detail::ensure_buffer(state.exp_avg(), param);
  detail::ensure_buffer(state.exp_avg_slow(), param);
  detail::ensure_buffer(state.exp_avg_sq(), param);
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
