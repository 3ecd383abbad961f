#pragma once

/// \file
/// AdEMAMix: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of AdEMAMix (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct AdEMAMixOptions : detail::OptionsBase<AdEMAMixOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  AdEMAMixOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  HOLOCRON_FIELD(double, lr) = 1e-3;
  /// Coefficients `(beta1, beta2, beta3)` of the fast average of the gradient, of the average of
  /// its square and of the slow average of the gradient. Default (0.9, 0.999, 0.9999); each in [0,
  /// 1).
  HOLOCRON_FIELD(betas3_t, betas) = std::make_tuple(0.9, 0.999, 0.9999);
  /// Weight of the slow average in the update. Default 5; any finite value.
  HOLOCRON_FIELD(double, alpha) = 5.0;
  /// Added to the denominator for numerical stability. Default 1e-8; must be >= 0.
  HOLOCRON_FIELD(double, eps) = 1e-8;
  /// L2 penalty added to the gradient: `g = g + weight_decay * p`. Default 0; must be >= 0
  /// (refuses a negative weight_decay, unlike pylocron).
  HOLOCRON_FIELD(double, weight_decay) = 0.0;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the gradient
  /// (torch's `decoupled_weight_decay`, as AdamW). Default false.
  HOLOCRON_FIELD(bool, decoupled_weight_decay) = false;
  /// Cautious Optimizers (Liang et al. 2024; pytorch-optimizer's `cautious`): the fast average's
  /// term only where `m1 * g > 0`, rescaled by `numel / (kept + 1)` (over the whole tensor, all
  /// shards); one more read of `g` and `m1` per step. Default false.
  HOLOCRON_FIELD(bool, caution) = false;
  /// Warm-up of `alpha` (the paper's `T_alpha`, bitsandbytes' `t_alpha`): at a parameter's step
  /// `t`, `alpha_t = min(t * alpha / t_alpha, alpha)`. Default none (no warm-up); must be > 0.
  HOLOCRON_FIELD(optional_real_t, t_alpha) = std::nullopt;
  /// Warm-up of `beta3` from `beta1` (the paper's `T_beta3`, bitsandbytes' `t_beta3`): for
  /// `t < t_beta3`, `beta3_t = min(exp(ln(beta1) ln(beta3) / ((1 - t/t_beta3) ln(beta3) +
  /// (t/t_beta3) ln(beta1))), beta3)`, then `beta3`. Default none (no warm-up); must be > 0, and then
  /// `beta1 > 0` and `beta3 > 0`.
  HOLOCRON_FIELD(optional_real_t, t_beta3) = std::nullopt;

  /// The dtype of the per-element state: the parameter's (the default), float32, bfloat16, or
  /// 8-bit codes of the moments of large tensors (StatePrecision). A checkpoint's state is
  /// converted to the group's on load.
  HOLOCRON_FIELD(StatePrecision, state_precision) = StatePrecision::param;
  /// Kahan-compensated bfloat16 and float16 weights: such a parameter keeps `kahan_comp` (its
  /// dtype and shape) and its weight is `p + kahan_comp`, so that updates below half a unit in the
  /// last place of `p` accumulate (functional::GradScaling::compensation). Other parameters are
  /// unaffected. Default false.
  HOLOCRON_FIELD(bool, kahan_summation) = false;

 public:
  /// Options that checkpoints written before they existed lack: those load with their defaults.
  static std::vector<std::string> fields_added_later() {
    return {"maximize", "t_alpha", "t_beta3", "decoupled_weight_decay", "caution", "state_precision", "kahan_summation"};
  }
  /// These options as the functional layer's hyper-parameters.
  functional::AdEMAMixHyper hyper() const;
};

/// State AdEMAMix keeps per parameter (conventions: see detail::ParamStateBase).
struct AdEMAMixParamState : detail::ParamStateBase<AdEMAMixParamState> {
  HOLOCRON_FIELDS;
  /// Number of updates of this parameter: `t` of the bias corrections, 1 on its first update.
  HOLOCRON_FIELD(int64_t, step) = 0;
  /// Fast moving average `m1` of the gradient.
  HOLOCRON_FIELD(torch::Tensor, exp_avg);
  /// Slow moving average `m2` of the gradient (not bias-corrected).
  HOLOCRON_FIELD(torch::Tensor, exp_avg_slow);
  /// Moving average `nu` of the squared gradient.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq);
  /// The Kahan compensation of a bfloat16 or float16 weight (the parameter's dtype); defined
  /// only with `kahan_summation`.
  HOLOCRON_FIELD(torch::Tensor, kahan_comp);
  /// Under state_precision "8bit", the scales of `exp_avg` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_absmax);
  /// Under state_precision "8bit", the scales of `exp_avg_slow` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_slow_absmax);
  /// Under state_precision "8bit", the scales of `exp_avg_sq` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq_absmax);

 public:
  /// The moments state_precision "8bit" keeps as codes, with their maps, in the order of the
  /// functional function's state lists.
  static c10::ArrayRef<detail::CodedMoment> coded_moments() {
    static constexpr detail::CodedMoment kMoments[] = {
        {"exp_avg", "exp_avg_absmax", true},
        {"exp_avg_slow", "exp_avg_slow_absmax", true},
        {"exp_avg_sq", "exp_avg_sq_absmax", false},
    };
    return kMoments;
  }
};

/// AdEMAMix: Adam with a second, slow moving average of gradients.
///
/// Paper: Matteo Pagliardini, Pierre Ablin, David Grangier, "The AdEMAMix Optimizer: Better,
/// Faster, Older", 2024, [arXiv:2409.03137](https://arxiv.org/abs/2409.03137).
///
/// Per parameter, with `g = g + weight_decay * p` (unless `decoupled_weight_decay`):
/// `m1 = beta1 * m1 + (1 - beta1) * g`, `nu = beta2 * nu + (1 - beta2) * g^2`,
/// `m2 = beta3 * m2 + (1 - beta3) * g`,
/// `p -= lr * (m1 / (1 - beta1^t) + alpha * m2) / (sqrt(nu) / sqrt(1 - beta2^t) + eps)`. As in the
/// reference, weight decay is an L2 term in the gradient; `alpha` and `beta3` warm up as the
/// paper's Algorithm 1 with `t_alpha` and `t_beta3` (by default they do not, as the reference).
///
/// Difference from the reference (pylocron 0.3.0):
/// - `weight_decay < 0` is refused; pylocron accepts it.
class AdEMAMix : public detail::Algorithm<AdEMAMixOptions, AdEMAMixParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit AdEMAMix(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdEMAMixOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit AdEMAMix(std::vector<torch::Tensor> params, AdEMAMixOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(AdEMAMixParamState& state, const torch::Tensor& param,
                  const AdEMAMixOptions& options) const override;
  void update(const AdEMAMixOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<AdEMAMixParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
