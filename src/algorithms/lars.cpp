// LARS: everything of the algorithm but its public header and its fused kernel
// (src/kernels/cpu/lars.cpp): the reference math, the checks and the functional
// function, the C++ class, and the Python operator.

#include "algorithms/common.h"

// ---- Reference math (ATen ops) ----------------------------------------------

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

// Only this file's functional function calls them.
namespace {

Sums lars_sums(TensorList params, TensorList grads) {
  Sums sums(params.size(), Sums::value_type{});
  for (size_t i = 0; i < params.size(); ++i) {
    ComputeScope scope(params[i]);  // a Kahan-compensated weight is p + c
    sums[i][0] = squared_norm_of(scope.in(params[i]));
    sums[i][1] = squared_norm_of(grads[i]);
  }
  return sums;
}

// Per tensor: d = (g + wd * p) * direction_scales[i], ..., p += steps[i] * u.
void lars(TensorList params, TensorList grads, TensorList momentum_buffers,
          c10::ArrayRef<bool> buffer_is_new, const LarsHyper& h, c10::ArrayRef<double> direction_scales,
          c10::ArrayRef<double> steps) {
  const bool with_momentum = h.momentum != 0.0;
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update.
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto direction = decayed_grad(scope.in(grads[i]), p, decay.coupled);
    if (direction_scales[i] != 1.0) direction = direction * direction_scales[i];
    if (with_momentum) {
      auto buf = scope.inout(momentum_buffers[i]);
      if (buffer_is_new[i]) {
        buf.copy_(direction);
      } else {
        buf.mul_(h.momentum).add_(direction, 1.0 - h.dampening);
      }
      direction = h.nesterov ? direction.add(buf, h.momentum) : buf;
    }
    if (decay.factor != 1.0) p.mul_(decay.factor);
    p.add_(direction, steps[i]);
    scope.commit();
  }
}

}  // namespace

}  // namespace holocron::optim::kernels::reference

// ---- Checks and the functional function -------------------------------------

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

void check(const LarsHyper& h) {
  check_non_negative("LARS", "lr", h.lr);
  check_non_negative("LARS", "trust_coeff", h.trust_coeff);
  check_non_negative("LARS", "eps", h.eps);
  check_non_negative("LARS", "momentum", h.momentum);
  check_hyper("LARS", "dampening", h.dampening, -INFINITY, false, INFINITY, false);
  check_non_negative("LARS", "weight_decay", h.weight_decay);
  TORCH_CHECK_VALUE(!h.nesterov || (h.momentum > 0 && h.dampening == 0),
                    "LARS: Nesterov momentum requires a momentum and zero dampening (momentum=",
                    h.momentum, ", dampening=", h.dampening, ")");
  if (h.scale_clip) {
    check_hyper("LARS", "scale_clip[0]", h.scale_clip->first, 0.0, true, INFINITY, false);
    check_hyper("LARS", "scale_clip[1]", h.scale_clip->second, h.scale_clip->first, true, INFINITY,
                true);
  }
}

std::vector<double> lars_(TensorList params, TensorList grads, TensorList momentum_buffers,
                          c10::ArrayRef<bool> buffer_is_new, const LarsHyper& h,
                          const GradScaling& scaling, const Sharding& sharding) {
  check(h);
  // 8-bit codes are taken for the moments (signed maps for the signed ones).
  const BlockwiseState blockwise_state("LARS", {{"momentum_buffers", if_used(h.momentum != 0.0, momentum_buffers), true}}, scaling);
  const bool with_momentum = h.momentum != 0.0;
  if (with_momentum) {
    check_group("LARS", params, grads, {{"momentum_buffers", momentum_buffers}});
    TORCH_CHECK(buffer_is_new.size() == params.size(), "LARS: got ", buffer_is_new.size(),
                " buffer flags for ", params.size(), " parameters");
  } else {
    check_group("LARS", params, grads, {});
  }
  check_sharding("LARS", sharding, params);
  const TensorList buffers = with_momentum ? momentum_buffers : TensorList{};
  const CompensatedWeights compensated_weights("LARS", params, scaling);
  const auto inv_grad_scale = grad_unscale("LARS", scaling);
  if (!inv_grad_scale) return {};
  auto& scratch = fused_scratch();
  const bool fused = fused_group(
      scratch.group, params,
      cpu::protocol::lars::Arrays<TensorList>{.param = params, .grad = grads, .momentum_buffer = buffers});
  auto& norms = scratch.sums;  // ||p||^2, ||g||^2
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  std::vector<double> local_lrs(params.size(), 1.0);
  const auto decay = split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay);
  args.constants.set(cpu::protocol::lars::Constants{.weight_decay = decay.coupled,
                                                    .momentum = h.momentum,
                                                    .dampening = h.dampening,
                                                    .nesterov = h.nesterov,
                                                    .decay = decay.factor});
  const bool adapt = h.always_adapt || h.weight_decay != 0.0;
  // Tensor t's trust ratio and step from its norms (over all shards).
  const auto coefficients = [&](int64_t t, const std::array<double, cpu::kMaxSums>& norm) {
    const auto i = static_cast<size_t>(t);
    // The decayed parameter's norm (a factor of 1 leaves it exact).
    const double p_norm = std::sqrt(norm[0]) * std::abs(decay.factor);
    const double g_norm = std::sqrt(norm[1]);
    const double phi = h.scale_clip ? clamp_norm(p_norm, *h.scale_clip) : p_norm;
    if (!adapt) {
      local_lrs[i] = 1.0;
    } else if (h.trust_on_gradient) {
      // timm and apex: 1 where either norm is 0, whatever the weight decay adds.
      local_lrs[i] = (p_norm == 0.0 || g_norm == 0.0)
                         ? 1.0
                         : h.trust_coeff * phi / (g_norm + decay.coupled * p_norm + h.eps);
    } else {
      // With the defaults (coefficient 1, eps 0) the reference's bits.
      local_lrs[i] = trust_ratio(h.trust_coeff * phi, g_norm + decay.coupled * p_norm + h.eps);
    }
    if (adapt && h.trust_clip) local_lrs[i] = std::min(local_lrs[i] / h.lr, 1.0);
    args.per_tensor[i].set(cpu::protocol::lars::PerTensor{
        .direction_scale = h.trust_on_gradient ? local_lrs[i] : 1.0,
        .step = h.trust_on_gradient ? -h.lr : -h.lr * local_lrs[i],
        .buffer_is_new = with_momentum && buffer_is_new[i]});
  };
  if (fused) {
    two_passes("LARS", sharding, 2, {cpu::Pass::LarsNorms, scratch.group, args},
               {cpu::Pass::LarsApply, scratch.group, args}, norms, coefficients);
    mark_written({params, buffers});
    return local_lrs;
  }
  const auto reference_grads = unscaled_grads(grads, *inv_grad_scale);
  norms = kernels::reference::lars_sums(params, reference_grads);
  all_reduce_sums("LARS", sharding, norms, 2);
  for (size_t i = 0; i < params.size(); ++i) coefficients(static_cast<int64_t>(i), norms[i]);
  std::vector<double> scales(params.size()), steps(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto row = args.per_tensor[i].get<cpu::protocol::lars::PerTensor>();
    scales[i] = row.direction_scale;
    steps[i] = row.step;
  }
  kernels::reference::lars(params, reference_grads, momentum_buffers, buffer_is_new, h, scales, steps);
  return local_lrs;
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

LARSOptions::LARSOptions(double lr) : lr_(lr) {}

functional::LarsHyper LARSOptions::hyper() const {
  return hyper_of<functional::LarsHyper>(*this);
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
  functional::detail::HeldTensors buffers;
  std::unique_ptr<bool[]> is_new(new bool[n]());
  if (options.momentum() != 0.0) {
    for (size_t i = 0; i < n; ++i) {
      auto& buffer = states[i]->momentum_buffer();
      is_new[i] = !buffer.defined();
      detail::ensure_buffer(buffer, params[i], options);
      if (is_new[i]) encode_new_moments(*states[i], params[i], options);
      buffers.push_back(buffer);
    }
    // The momentum buffers made here: their scales join the group's (set before update()).
    if (options.state_precision() == StatePrecision::blockwise8) set_state_absmax(blockwise_scales(states, options));
  }
  std::vector<double> local_lrs;
  try {
    local_lrs = functional::lars_(params, grads, buffers, c10::ArrayRef<bool>(is_new.get(), n),
                                  options.hyper(), grad_scaling());
  } catch (...) {
    // A buffer created for this step must not outlive a failed one.
    for (size_t i = 0; i < n; ++i) {
      if (is_new[i]) states[i]->momentum_buffer(torch::Tensor()).momentum_buffer_absmax(torch::Tensor());
    }
    throw;
  }
  for (size_t i = 0; i < states.size(); ++i) states[i]->local_lr(local_lrs[i]);
}

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

c10::IValue lars(const Arguments& a) {
  const auto params = a.params();
  const auto is_new = a.flags("buffer_is_new");
  std::unique_ptr<bool[]> flags(new bool[is_new.size()]());
  std::copy(is_new.begin(), is_new.end(), flags.get());
  return ratios_out(
      F::lars_(params, a.grads("LARS", params), a.state("momentum_buffers"),
               c10::ArrayRef<bool>(flags.get(), is_new.size()),
               a.hyper<F::LarsHyper>("LARS"),
               a.scaling(), a.sharding(params)),
      params);
}

}  // namespace

HOLOCRON_OPTIM_OP(
    "lars_(Tensor(a!)[] params, Tensor[]? grads, Tensor(b!)[] momentum_buffers, "
    "bool[] buffer_is_new, float lr, float momentum, float dampening, float weight_decay, "
    "bool nesterov, float[] scale_clip, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING
    ", float trust_coeff=1.0, float eps=0.0, bool trust_clip=False, bool always_adapt=True, "
    "bool trust_on_gradient=False, " HOLOCRON_MAXIMIZE ", bool decoupled_weight_decay=False, " HOLOCRON_KAHAN ", " HOLOCRON_BLOCKWISE ", " HOLOCRON_LR_TENSOR ", " HOLOCRON_PINNED ") -> Tensor",
    &lars)

}  // namespace holocron::optim::ops
