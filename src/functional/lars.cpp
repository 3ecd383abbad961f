// LARS: checks, then the fused kernels or the reference backend.

#include "functional/common.h"
#include "kernels/reference/reference.h"

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
