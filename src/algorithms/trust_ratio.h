#pragma once

// What LAMB and RaLars share: one trust ratio per tensor from ||p|| and the
// norm of the direction, in the reference math and in the fused kernels' two
// passes around the host phase.

#include "algorithms/common.h"

namespace holocron::optim::functional::detail {
// The weight of the gradient in LAMB's first moment.
inline double lamb_grad_weight(const LambHyper& h) { return h.grad_averaging ? 1.0 - h.beta1 : 1.0; }
// The weight decay inside LAMB's direction (none when decoupled), and the factor the parameter is
// multiplied by before the step (1 when coupled).
inline double lamb_coupled_decay(const LambHyper& h) {
  return split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay).coupled;
}
inline double lamb_decay_factor(const LambHyper& h) {
  return split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay).factor;
}
}  // namespace holocron::optim::functional::detail

namespace holocron::optim::kernels::reference::trust {

using namespace functional;
using namespace functional::detail;

// `grad_weight`: 1 - beta1, or 1 for LAMB without grad averaging.
inline void update_moments(at::Tensor& m, at::Tensor& v, const at::Tensor& g, double beta1,
                           double grad_weight, double beta2) {
  m.mul_(beta1).add_(g, grad_weight);
  v.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
}

// LAMB's and RaLars' directions before the trust ratio, from this step's moments.
struct LambDirection {
  const LambHyper& h;
  c10::ArrayRef<int64_t> steps;
  // Before the weight decay: what caution masks.
  at::Tensor adam_step(const at::Tensor& m, const at::Tensor& v, size_t i) const {
    if (!h.bias_correction) return m / v.sqrt().add_(h.eps);
    const double bc1 = bias_correction(h.beta1, steps[i]);
    const double bc2 = bias_correction(h.beta2, steps[i]);
    return (m / bc1).div_(v.sqrt().div_(std::sqrt(bc2)).add_(h.eps));
  }
  at::Tensor operator()(const at::Tensor& p, const at::Tensor& m, const at::Tensor& v, size_t i) const {
    return with_decay(adam_step(m, v, i), p, lamb_coupled_decay(h));
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
    return LambDirection::with_decay(u, p, split_weight_decay(h.weight_decay, h.lr, h.decoupled_weight_decay).coupled);
  }
};

// ||p||^2 and ||u||^2 with u from this step's moments, which are not stored.
template <typename Direction>
Sums trust_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                double beta1, double grad_weight, double beta2, const Direction& direction) {
  Sums sums(params.size(), Sums::value_type{});
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.in(params[i]);
    auto m = scope.in(exp_avgs[i]).clone();
    auto v = scope.in(exp_avg_sqs[i]).clone();
    update_moments(m, v, scope.in(grads[i]), beta1, grad_weight, beta2);
    sums[i][0] = squared_norm_of(p);
    sums[i][1] = squared_norm_of(direction(p, m, v, i));
  }
  return sums;
}

// `decay`: the parameter is multiplied by it before the step, unless it is 1.
template <typename Direction>
void trust_apply(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                 double beta1, double grad_weight, double beta2, double lr, c10::ArrayRef<double> local_lrs,
                 const Direction& direction, double decay = 1.0) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    ComputeScope scope(params[i]);
    auto p = scope.inout(params[i]);
    auto m = scope.inout(exp_avgs[i]);
    auto v = scope.inout(exp_avg_sqs[i]);
    update_moments(m, v, scope.in(grads[i]), beta1, grad_weight, beta2);
    if (decay != 1.0) p.mul_(decay);
    p.add_(direction(p, m, v, i), -lr * local_lrs[i]);
    scope.commit();
  }
}

}  // namespace holocron::optim::kernels::reference::trust

namespace holocron::optim::functional::detail {

namespace cpu = kernels::cpu;

inline void check_lamb_family(const char* name, double lr, double beta1, double beta2, double eps,
                       double weight_decay, const ScaleClip& clip) {
  check_non_negative(name, "lr", lr);
  check_beta(name, "betas[0]", beta1);
  check_beta(name, "betas[1]", beta2);
  check_non_negative(name, "eps", eps);
  // The reference accepts a negative weight decay here; torch refuses it and
  // so do we.
  check_non_negative(name, "weight_decay", weight_decay);
  check_hyper(name, "scale_clip[0]", clip.first, 0.0, true, INFINITY, false);
  check_hyper(name, "scale_clip[1]", clip.second, clip.first, true, INFINITY, true);
}

// How a group turns the norms into trust ratios.
struct TrustRule {
  ScaleClip clip;
  // ||p|| is the parameter's times this before clamping (LAMB's decoupled decay: the decayed one).
  double p_norm_scale = 1.0;
  // LAMBC: the ratio capped at 1.
  bool cap_at_one = false;
  // False: every ratio is 1 (timm's and apex's LAMB where weight_decay is 0, unless always_adapt).
  bool adapt = true;
};

inline TrustRule lamb_trust_rule(const LambHyper& h) {
  return {h.scale_clip, std::abs(lamb_decay_factor(h)), h.trust_clip, h.always_adapt || h.weight_decay != 0.0};
}

// A tensor's trust ratio from its ||p||^2 and ||u||^2 (over all shards).
inline double trust_ratio_of(const std::array<double, cpu::kMaxSums>& norms, const TrustRule& rule) {
  if (!rule.adapt) return 1.0;
  // A scale of 1 leaves the product exact.
  const double ratio = trust_ratio(clamp_norm(std::sqrt(norms[0]) * rule.p_norm_scale, rule.clip), std::sqrt(norms[1]));
  return rule.cap_at_one ? std::min(ratio, 1.0) : ratio;
}

inline std::vector<double> trust_ratios(const cpu::Sums& norms, const TrustRule& rule) {
  std::vector<double> local_lrs(norms.size());
  for (size_t i = 0; i < norms.size(); ++i) local_lrs[i] = trust_ratio_of(norms[i], rule);
  return local_lrs;
}

// The fused kernels' two passes around the host phase (two_passes). Pass 1 stores the float and
// double moments (pass 2 reads them), so a throwing all-reduce leaves them advanced; every check
// has run before it. The per-tensor rows (PerTensor of protocol::lamb or ::ralars) already hold
// the direction's coefficients; their step is set here, from the trust ratios.
template <typename PerTensor>
std::vector<double> fused_trust_step(cpu::Pass moments, cpu::Pass apply, FusedScratch& scratch,
                                     const char* name, double lr, const TrustRule& rule,
                                     const Sharding& sharding) {
  auto& args = scratch.args;
  std::vector<double> local_lrs(args.per_tensor.size());
  two_passes(name, sharding, 2, {moments, scratch.group, args}, {apply, scratch.group, args}, scratch.sums,
             [&](int64_t t, const std::array<double, cpu::kMaxSums>& norms) {
               const auto i = static_cast<size_t>(t);
               local_lrs[i] = trust_ratio_of(norms, rule);
               auto row = args.per_tensor[i].get<PerTensor>();
               row.step = -lr * local_lrs[i];
               args.per_tensor[i].set(row);
             });
  return local_lrs;
}

}  // namespace holocron::optim::functional::detail
