#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

namespace {

void update_moments(at::Tensor& m, at::Tensor& v, const at::Tensor& g, double beta1,
                    double beta2) {
  m.mul_(beta1).add_(g, 1.0 - beta1);
  v.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
}

// LAMB's and RaLars' directions before the trust ratio, from this step's moments.
struct LambDirection {
  const LambHyper& h;
  at::Tensor operator()(const at::Tensor& p, const at::Tensor& m, const at::Tensor& v, size_t) const {
    return with_decay(m / v.sqrt().add_(h.eps), p, h.weight_decay);
  }
  static at::Tensor with_decay(at::Tensor u, const at::Tensor& p, double weight_decay) {
    if (weight_decay != 0.0) u.add_(p, weight_decay);
    return u;
  }
};

struct RaLarsDirection {
  const RaLarsHyper& h;
  c10::ArrayRef<int64_t> steps;
  double sma_inf;
  at::Tensor operator()(const at::Tensor& p, const at::Tensor& m, const at::Tensor& v, size_t i) const {
    const auto t = static_cast<double>(steps[i]);
    const double bc1 = 1.0 - std::pow(h.beta1, t);
    const double bc2 = 1.0 - std::pow(h.beta2, t);
    at::Tensor u;
    if (const auto r = ralars_rectification(sma_inf, t, bc2)) {
      u = (m / bc1).div_((v / bc2).sqrt_().add_(h.eps)).mul_(*r);
    } else if (h.force_adaptive_momentum) {
      u = (m / bc1).div_((v / bc2).sqrt_().add_(h.eps));
    } else {
      u = m / bc1;
    }
    return LambDirection::with_decay(u, p, h.weight_decay);
  }
};

// ||p||^2 and ||u||^2 with u from this step's moments, which are not stored.
template <typename Direction>
Sums trust_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                double beta1, double beta2, const Direction& direction) {
  Sums sums(params.size(), Sums::value_type{});
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.in(params[i]);
    auto m = scope.in(exp_avgs[i]).clone();
    auto v = scope.in(exp_avg_sqs[i]).clone();
    update_moments(m, v, scope.in(grads[i]), beta1, beta2);
    sums[i][0] = squared_norm_of(p);
    sums[i][1] = squared_norm_of(direction(p, m, v, i));
  }
  return sums;
}

template <typename Direction>
void trust_apply(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                 double beta1, double beta2, double lr, c10::ArrayRef<double> local_lrs,
                 const Direction& direction) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    update_moments(m, v, scope.in(grads[i]), beta1, beta2);
    p.add_(direction(p, m, v, i), -lr * local_lrs[i]);
    scope.commit();
  }
}

double default_sma_inf(const RaLarsHyper& h) { return h.sma_inf.value_or(2.0 / (1.0 - h.beta2) - 1.0); }

}  // namespace

Sums lamb_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               const LambHyper& h) {
  return trust_sums(params, grads, exp_avgs, exp_avg_sqs, h.beta1, h.beta2, LambDirection{h});
}

void lamb(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
          const LambHyper& h, c10::ArrayRef<double> local_lrs) {
  trust_apply(params, grads, exp_avgs, exp_avg_sqs, h.beta1, h.beta2, h.lr, local_lrs,
              LambDirection{h});
}

Sums ralars_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                 c10::ArrayRef<int64_t> steps, const RaLarsHyper& h) {
  return trust_sums(params, grads, exp_avgs, exp_avg_sqs, h.beta1, h.beta2,
                    RaLarsDirection{h, steps, default_sma_inf(h)});
}

void ralars(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            c10::ArrayRef<int64_t> steps, const RaLarsHyper& h, c10::ArrayRef<double> local_lrs) {
  trust_apply(params, grads, exp_avgs, exp_avg_sqs, h.beta1, h.beta2, h.lr, local_lrs,
              RaLarsDirection{h, steps, default_sma_inf(h)});
}

}  // namespace holocron::optim::kernels::reference
