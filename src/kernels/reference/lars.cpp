#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

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

}  // namespace holocron::optim::kernels::reference
