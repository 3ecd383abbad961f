#include "functional/common.h"

namespace holocron::optim::functional {

using namespace detail;

namespace {

void check_lamb_family(const char* name, double lr, double beta1, double beta2, double eps,
                       double weight_decay, const ScaleClip& clip) {
  check_non_negative(name, "lr", lr);
  check_beta(name, "betas[0]", beta1);
  check_beta(name, "betas[1]", beta2);
  check_non_negative(name, "eps", eps);
  // The reference accepts a negative weight decay here; only non-finite is refused.
  check_hyper(name, "weight_decay", weight_decay, -INFINITY, false, INFINITY, false);
  check_hyper(name, "scale_clip[0]", clip.first, 0.0, true, INFINITY, false);
  check_hyper(name, "scale_clip[1]", clip.second, clip.first, true, INFINITY, true);
}

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

void check(const LambHyper& h) {
  check_lamb_family("LAMB", h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.scale_clip);
}

void check(const RaLarsHyper& h) {
  check_lamb_family("RaLars", h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.scale_clip);
  if (h.sma_inf) check_hyper("RaLars", "sma_inf", *h.sma_inf, -INFINITY, false, INFINITY, false);
}

std::vector<double> lamb_(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, const LambHyper& h) {
  check(h);
  check_group("LAMB", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
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

std::vector<double> ralars_(TensorList params, TensorList grads, TensorList exp_avgs,
                            TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                            const RaLarsHyper& h) {
  check(h);
  check_group("RaLars", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  check_steps("RaLars", steps, params.size());
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
    // Length of the approximated SMA; the rectified step is only defined above 4.
    const double sma_t = sma_inf - 2.0 * t * (1.0 - bc2) / bc2;
    at::Tensor update;
    if (sma_t > 4.0) {
      const double r = std::sqrt((sma_t - 4.0) * (sma_t - 2.0) * sma_inf /
                                 ((sma_inf - 4.0) * (sma_inf - 2.0) * sma_t));
      update = (m / bc1).div_((v / bc2).sqrt_().add_(h.eps)).mul_(r);
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

}  // namespace holocron::optim::functional
