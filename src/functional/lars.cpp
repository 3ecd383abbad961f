#include "functional/common.h"

namespace holocron::optim::functional {

using namespace detail;

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
                          c10::ArrayRef<bool> buffer_is_new, const LarsHyper& h) {
  check(h);
  const bool with_momentum = h.momentum != 0.0;
  if (with_momentum) {
    check_group("LARS", params, grads, {{"momentum_buffers", momentum_buffers}});
    TORCH_CHECK(buffer_is_new.size() == params.size(), "LARS: got ", buffer_is_new.size(),
                " buffer flags for ", params.size(), " parameters");
  } else {
    check_group("LARS", params, grads, {});
  }

  std::vector<double> local_lrs(params.size(), 1.0);
  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = scope.in(grads[i]);
    const double p_norm = norm_of(p);
    const double denom = norm_of(g) + h.weight_decay * p_norm;
    const double phi = h.scale_clip ? clamp_norm(p_norm, *h.scale_clip) : p_norm;
    const double local_lr = trust_ratio(phi, denom);
    local_lrs[i] = local_lr;

    auto direction = decayed_grad(g, p, h.weight_decay);
    if (with_momentum) {
      auto buf = scope.inout(momentum_buffers[i]);
      if (buffer_is_new[i]) {
        buf.copy_(direction);
      } else {
        buf.mul_(h.momentum).add_(direction, 1.0 - h.dampening);
      }
      direction = h.nesterov ? direction.add(buf, h.momentum) : buf;
    }
    p.add_(direction, -h.lr * local_lr);
    scope.commit();
  }
  return local_lrs;
}

}  // namespace holocron::optim::functional
