#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

std::vector<double> lars(TensorList params, TensorList grads, TensorList momentum_buffers,
                          c10::ArrayRef<bool> buffer_is_new, const LarsHyper& h) {
  const bool with_momentum = h.momentum != 0.0;
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

}  // namespace holocron::optim::kernels::reference
