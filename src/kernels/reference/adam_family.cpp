// TAdam, AdaBelief, AdamP, Adan and AdEMAMix: per-element moment updates with
// Adam-style bias corrections.

#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

Sums tadam_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                const TAdamHyper& h) {
  Sums sums(params.size(), Sums::value_type{});
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), scope.in(params[i]), h.weight_decay);
    // The Mahalanobis distance of this gradient from the moments before this step.
    sums[i][0] = (g - scope.in(exp_avgs[i])).pow_(2).div_(scope.in(exp_avg_sqs[i]) + h.eps)
                     .sum(at::kDouble).item<double>();
  }
  return sums;
}

void tadam(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<std::array<double, 2>> mixing,
           c10::ArrayRef<int64_t> steps, const TAdamHyper& h) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, h.weight_decay);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    m.mul_(mixing[i][0]).add_(g, mixing[i][1]);
    v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
    auto denom = adam_denominator(scope, v, h.amsgrad, max_exp_avg_sqs, i,
                                  bias_correction(h.beta2, steps[i]), h.eps);
    p.addcdiv_(m, denom, -h.lr / bias_correction(h.beta1, steps[i]));
    scope.commit();
  }
}

void adabelief(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                const AdaBeliefHyper& h) {

  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, h.weight_decay);
    auto m = scope.inout(exp_avgs[i]);
    auto s = scope.inout(exp_avg_sqs[i]);
    m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
    auto residual = g - m;
    s.mul_(h.beta2).addcmul_(residual, residual, 1.0 - h.beta2);
    auto denom = adam_denominator(scope, s, h.amsgrad, max_exp_avg_sqs, i,
                                  bias_correction(h.beta2, steps[i]), h.eps);
    p.addcdiv_(m, denom, -h.lr / bias_correction(h.beta1, steps[i]));
    scope.commit();
  }
}

namespace {

void adamp_moments(at::Tensor& m, at::Tensor& v, const at::Tensor& g, const AdamPHyper& h) {
  m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
}

// Adam's step m_hat / (sqrt(v_hat) + eps), given the denominator.
at::Tensor adamp_direction(const at::Tensor& m, const at::Tensor& denominator, int64_t step,
                           const AdamPHyper& h) {
  return (m / bias_correction(h.beta1, step)).div_(denominator);
}

}  // namespace

Sums adamp_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h) {
  Sums sums(params.size(), Sums::value_type{});
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.in(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, h.weight_decay);
    auto m = scope.in(exp_avgs[i]).clone();
    auto v = scope.in(exp_avg_sqs[i]).clone();
    adamp_moments(m, v, g, h);
    // This phase writes nothing: the running maximum too is taken aside.
    auto second = h.amsgrad ? at::maximum(scope.in(max_exp_avg_sqs[i]), v) : v;
    auto q = adamp_direction(m, denominator_of(second, bias_correction(h.beta2, steps[i]), h.eps),
                             steps[i], h);
    sums[i] = {dot_of(p, g), squared_norm_of(p), squared_norm_of(g), dot_of(p, q)};
  }
  return sums;
}

void adamp(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h,
           c10::ArrayRef<double> projections) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, h.weight_decay);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    adamp_moments(m, v, g, h);
    auto q = adamp_direction(m, adam_denominator(scope, v, h.amsgrad, max_exp_avg_sqs, i,
                                                 bias_correction(h.beta2, steps[i]), h.eps),
                             steps[i], h);
    // Where the weight is nearly orthogonal to its gradient (scale-invariant
    // weights), the radial part of the update was found and is removed.
    if (projections[i] != 0.0) q.sub_(p, projections[i]);
    p.add_(q, -h.lr);
    scope.commit();
  }
}

void adan(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
           TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
           c10::ArrayRef<int64_t> steps, const AdanHyper& h) {

  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, h.weight_decay);
    auto prev = scope.inout(prev_grads[i]);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    auto n = scope.inout(exp_avg_deltas[i]);

    // Unlike pylocron: the gradient difference is taken against the previous step's
    // gradient, and is zero on the first step.
    auto diff = steps[i] == 1 ? at::zeros_like(g) : g - prev;
    m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
    v.mul_(h.beta2).add_(diff, 1.0 - h.beta2);
    auto corrected = g + h.beta2 * diff;
    n.mul_(h.beta3).addcmul_(corrected, corrected, 1.0 - h.beta3);
    prev.copy_(g);

    auto denom = adam_denominator(scope, n, h.amsgrad, max_exp_avg_deltas, i,
                                  bias_correction(h.beta3, steps[i]), h.eps);
    auto direction = (m / bias_correction(h.beta1, steps[i]))
                         .add_(v, h.beta2 / bias_correction(h.beta2, steps[i]))
                         .div_(denom);
    p.add_(direction, -h.lr);
    if (h.weight_decay != 0.0) p.div_(1.0 + h.weight_decay * h.lr);
    scope.commit();
  }
}

void ademamix(TensorList params, TensorList grads, TensorList exp_avgs,
               TensorList exp_avgs_slow, TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const AdEMAMixHyper& h) {

  for (size_t i = 0; i < params.size(); ++i) {
    // An empty tensor has nothing to update (and no norm or cosine to take).
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto g = decayed_grad(scope.in(grads[i]), p, h.weight_decay);
    auto m1 = scope.inout(exp_avgs[i]);
    auto m2 = scope.inout(exp_avgs_slow[i]);
    auto nu = scope.inout(exp_avg_sqs[i]);
    m1.mul_(h.beta1).add_(g, 1.0 - h.beta1);
    nu.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
    m2.mul_(h.beta3).add_(g, 1.0 - h.beta3);
    auto denom = adam_denominator(scope, nu, false, {}, i, bias_correction(h.beta2, steps[i]), h.eps);
    auto numerator = (m1 / bias_correction(h.beta1, steps[i])).add_(m2, h.alpha);
    p.addcdiv_(numerator, denom, -h.lr);
    scope.commit();
  }
}

}  // namespace holocron::optim::kernels::reference
