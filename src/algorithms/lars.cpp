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
    sums[i][0] = squared_norm_of(params[i]);
    sums[i][1] = squared_norm_of(grads[i]);
  }
  return sums;
}

void lars(TensorList params, TensorList grads, TensorList momentum_buffers,
          c10::ArrayRef<bool> buffer_is_new, const LarsHyper& h, c10::ArrayRef<double> local_lrs) {
  const bool with_momentum = h.momentum != 0.0;
  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update.
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto direction = decayed_grad(scope.in(grads[i]), p, h.weight_decay);
    if (with_momentum) {
      auto buf = scope.inout(momentum_buffers[i]);
      if (buffer_is_new[i]) {
        buf.copy_(direction);
      } else {
        buf.mul_(h.momentum).add_(direction, 1.0 - h.dampening);
      }
      direction = h.nesterov ? direction.add(buf, h.momentum) : buf;
    }
    p.add_(direction, -h.lr * local_lrs[i]);
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
  const auto inv_grad_scale = grad_unscale("LARS", scaling);
  if (!inv_grad_scale) return {};
  auto& scratch = fused_scratch();
  const bool fused = fused_group(
      scratch.group, params,
      cpu::protocol::lars::Arrays<TensorList>{.param = params, .grad = grads, .momentum_buffer = buffers});
  const auto reference_grads = fused ? std::vector<at::Tensor>{} : unscaled_grads(grads, *inv_grad_scale);
  auto& norms = scratch.sums;  // ||p||^2, ||g||^2
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  if (fused) {
    cpu::run(cpu::Pass::LarsNorms, scratch.group, args, &norms);
  } else {
    norms = kernels::reference::lars_sums(params, reference_grads);
  }
  all_reduce_sums("LARS", sharding, norms, 2);

  std::vector<double> local_lrs(params.size(), 1.0);
  args.constants.set(cpu::protocol::lars::Constants{
      .weight_decay = h.weight_decay, .momentum = h.momentum, .dampening = h.dampening, .nesterov = h.nesterov});
  for (size_t i = 0; i < params.size(); ++i) {
    const double p_norm = std::sqrt(norms[i][0]);
    const double phi = h.scale_clip ? clamp_norm(p_norm, *h.scale_clip) : p_norm;
    local_lrs[i] = trust_ratio(phi, std::sqrt(norms[i][1]) + h.weight_decay * p_norm);
    args.per_tensor[i].set(cpu::protocol::lars::PerTensor{
        .step = -h.lr * local_lrs[i], .buffer_is_new = with_momentum && buffer_is_new[i]});
  }
  if (!fused) {
    kernels::reference::lars(params, reference_grads, momentum_buffers, buffer_is_new, h, local_lrs);
    return local_lrs;
  }
  cpu::run(cpu::Pass::LarsApply, scratch.group, args);
  mark_written({params, buffers});
  return local_lrs;
}

}  // namespace holocron::optim::functional

// ---- The C++ class -------------------------------------------------------------

namespace holocron::optim {

using namespace detail;

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

}  // namespace holocron::optim

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

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

}  // namespace

HOLOCRON_OPTIM_OP(
    "lars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
    "bool[] buffer_is_new, float lr, float momentum, float dampening, float weight_decay, "
    "bool nesterov, float[] scale_clip, " HOLOCRON_SCALING ", " HOLOCRON_SHARDING ") -> Tensor",
    &lars)

}  // namespace holocron::optim::ops
