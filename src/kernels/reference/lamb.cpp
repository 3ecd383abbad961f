#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

namespace {

// The step shared by LAMB and RaLars once the adaptive direction is known:
// add weight decay, scale by the clipped trust ratio, apply.
double apply_trust_ratio(at::Tensor& p, at::Tensor& update, double lr, double weight_decay,
                         const ScaleClip& clip) {
  if (weight_decay != 0.0) update.add_(p, weight_decay);
  const double local_lr = trust_ratio(clamp_norm(norm_of(p), clip), norm_of(update));
  p.add_(update, -lr * local_lr);
  return local_lr;
}

void update_moments(at::Tensor& m, at::Tensor& v, const at::Tensor& g, double beta1,
                    double beta2) {
  m.mul_(beta1).add_(g, 1.0 - beta1);
  v.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
}

}  // namespace

std::vector<double> lamb(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, const LambHyper& h) {
  std::vector<double> local_lrs(params.size(), 1.0);
  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = scope.in(grads[i]);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    update_moments(m, v, g, h.beta1, h.beta2);
    auto update = m / v.sqrt().add_(h.eps);
    local_lrs[i] = apply_trust_ratio(p, update, h.lr, h.weight_decay, h.scale_clip);
    scope.commit();
  }
  return local_lrs;
}

std::vector<double> ralars(TensorList params, TensorList grads, TensorList exp_avgs,
                            TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                            const RaLarsHyper& h) {
  const double sma_inf = h.sma_inf.value_or(2.0 / (1.0 - h.beta2) - 1.0);
  std::vector<double> local_lrs(params.size(), 1.0);
  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = scope.in(grads[i]);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    update_moments(m, v, g, h.beta1, h.beta2);

    const auto t = static_cast<double>(steps[i]);
    const double bc1 = 1.0 - std::pow(h.beta1, t);
    const double bc2 = 1.0 - std::pow(h.beta2, t);
    at::Tensor update;
    if (const auto r = ralars_rectification(sma_inf, t, bc2)) {
      update = (m / bc1).div_((v / bc2).sqrt_().add_(h.eps)).mul_(*r);
    } else if (h.force_adaptive_momentum) {
      update = (m / bc1).div_((v / bc2).sqrt_().add_(h.eps));
    } else {
      update = m / bc1;
    }
    local_lrs[i] = apply_trust_ratio(p, update, h.lr, h.weight_decay, h.scale_clip);
    scope.commit();
  }
  return local_lrs;
}

}  // namespace holocron::optim::kernels::reference
