#pragma once

/// \file
/// LAMB: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of LAMB (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct LAMBOptions : detail::OptionsBase<LAMBOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  LAMBOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  HOLOCRON_FIELD(double, lr) = 1e-3;
  /// Coefficients `(beta1, beta2)` of the moving averages of the gradient and of its square.
  /// Default (0.9, 0.999); each in [0, 1).
  HOLOCRON_FIELD(betas2_t, betas) = std::make_tuple(0.9, 0.999);
  /// Added to the denominator for numerical stability. Default 1e-8; must be >= 0.
  HOLOCRON_FIELD(double, eps) = 1e-8;
  /// Added to the direction as `weight_decay * p`, before the trust ratio. Default 0; must be >= 0
  /// (pylocron accepts a negative value).
  HOLOCRON_FIELD(double, weight_decay) = 0.0;
  /// Bounds `(low, high)` for `||p||` in the trust ratio, with `0 <= low <= high` (`high` may be
  /// infinite). Default none, meaning (0, 10), as in the reference.
  HOLOCRON_FIELD(scale_clip_t, scale_clip) = std::nullopt;
  /// Divides the moments by `1 - beta^t` (timm's and apex's LAMB). Default false, as the reference.
  HOLOCRON_FIELD(bool, bias_correction) = false;
  /// The gradient enters the first moment weighted `1 - beta1`; false: weighted 1 (timm's and
  /// apex's `grad_averaging`). Default true, as the reference.
  HOLOCRON_FIELD(bool, grad_averaging) = true;
  /// Global gradient-norm clipping (timm, apex): before anything reads them, the gradients of every
  /// group are divided by `max(1, norm / max_grad_norm)`, `norm` being the one norm of all of them
  /// (unscaled); they are not modified. Groups holding different values are clipped apart, each by
  /// the norm over the groups holding its value. Default none (no clipping); must be > 0.
  HOLOCRON_FIELD(optional_real_t, max_grad_norm) = std::nullopt;
  /// Caps the trust ratio at 1 (LAMBC). Default false.
  HOLOCRON_FIELD(bool, trust_clip) = false;
  /// A trust ratio also where `weight_decay` is 0; false: ratio 1 there, as timm and apex. Default
  /// true, as the reference.
  HOLOCRON_FIELD(bool, always_adapt) = true;

  /// Decoupled weight decay (timm's `decoupled_decay`, torch's `decoupled_weight_decay`):
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the direction,
  /// so the decay stays outside the trust ratio's `||u||`; `||p||` is the decayed parameter's.
  /// Default false.
  HOLOCRON_FIELD(bool, decoupled_weight_decay) = false;
  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// Cautious Optimizers (Liang et al. 2024; timm's `caution`): the Adam step before the weight
  /// decay only where it agrees in sign with the gradient, rescaled by `1 / max(fraction kept,
  /// 1e-3)` (of the whole tensor, over all shards); the trust ratio is then of the result. Pass 2
  /// reads the gradient again. Default false.
  HOLOCRON_FIELD(bool, caution) = false;
  /// With `decoupled_weight_decay`: `p *= 1 - lr^2 / max_lr * weight_decay`, a decay that follows
  /// the schedule's lr relative to its peak (timm's `corrected_weight_decay`). Default false.
  HOLOCRON_FIELD(bool, corrected_weight_decay) = false;
  /// The peak lr of `corrected_weight_decay` (timm's `max_lr_snapshot`); > 0 and finite. None:
  /// the constructor's lr, as timm takes it (LAMB sets it in its defaults and in the groups given
  /// options without it; a group added later with options of its own must hold it, a group
  /// without options takes the defaults'). Default none.
  HOLOCRON_FIELD(optional_real_t, max_lr) = std::nullopt;

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
    return {"bias_correction", "grad_averaging", "max_grad_norm", "trust_clip", "always_adapt", "maximize",
            "decoupled_weight_decay", "caution", "corrected_weight_decay", "max_lr", "state_precision", "kahan_summation"};
  }
  /// These options as the functional layer's hyper-parameters.
  functional::LambHyper hyper() const;
};

/// State LAMB keeps per parameter (conventions: see detail::ParamStateBase).
struct LAMBParamState : detail::ParamStateBase<LAMBParamState> {
  HOLOCRON_FIELDS;
  /// Number of updates of this parameter (LAMB has no bias correction; counted as the reference
  /// does).
  HOLOCRON_FIELD(int64_t, step) = 0;
  /// Moving average of the gradient (first moment `m`).
  HOLOCRON_FIELD(torch::Tensor, exp_avg);
  /// Moving average of the squared gradient (second moment `v`).
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq);
  /// Trust ratio of the last step: `clamp(||p||, scale_clip) / ||u||`, or 1 when either is 0.
  HOLOCRON_FIELD(double, local_lr) = 1.0;
  /// The Kahan compensation of a bfloat16 or float16 weight (the parameter's dtype); defined
  /// only with `kahan_summation`.
  HOLOCRON_FIELD(torch::Tensor, kahan_comp);
  /// Under state_precision "8bit", the scales of `exp_avg` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_absmax);
  /// Under state_precision "8bit", the scales of `exp_avg_sq` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq_absmax);

 public:
  /// The moments state_precision "8bit" keeps as codes, with their maps, in the order of the
  /// functional function's state lists.
  static c10::ArrayRef<detail::CodedMoment> coded_moments() {
    static constexpr detail::CodedMoment kMoments[] = {
        {"exp_avg", "exp_avg_absmax", true},
        {"exp_avg_sq", "exp_avg_sq_absmax", false},
    };
    return kMoments;
  }
};

/// LAMB (Layer-wise Adaptive Moments for Batch training): Adam moments, one trust ratio per tensor.
///
/// Paper: Yang You, Jing Li, Sashank Reddi, Jonathan Hseu, Sanjiv Kumar, Srinadh Bhojanapalli,
/// Xiaodan Song, James Demmel, Kurt Keutzer, Cho-Jui Hsieh, "Large Batch Optimization for Deep
/// Learning: Training BERT in 76 minutes", 2019,
/// [arXiv:1904.00962](https://arxiv.org/abs/1904.00962).
///
/// Per parameter, as the reference: `m = beta1 * m + (1 - beta1) * g`,
/// `v = beta2 * v + (1 - beta2) * g^2` (no bias correction),
/// `u = m / (sqrt(v) + eps) + weight_decay * p`, `local_lr = clamp(||p||, scale_clip) / ||u||` (1
/// when either is 0), `p -= lr * local_lr * u`. `scale_clip` bounds `||p||` in the trust ratio;
/// none means (0, 10).
///
/// The options of timm's `Lamb` and apex's `FusedLAMB` (off by default): `bias_correction`
/// (`u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p`),
/// `grad_averaging` false (`m = beta1 * m + g`), `max_grad_norm` (g divided by
/// `max(1, ||all g|| / max_grad_norm)`), `trust_clip` (`min(local_lr, 1)`), `always_adapt` false
/// (`local_lr = 1` where `weight_decay == 0`), `corrected_weight_decay` (the decoupled decay times
/// `lr / max_lr`). timm's numbers also need `scale_clip` `(0, inf)`.
///
/// Difference from the reference (pylocron 0.3.0):
/// - `weight_decay < 0` is refused; pylocron accepts it.
class LAMB : public detail::Algorithm<LAMBOptions, LAMBParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit LAMB(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      LAMBOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit LAMB(std::vector<torch::Tensor> params, LAMBOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(LAMBParamState& state, const torch::Tensor& param,
                  const LAMBOptions& options) const override;
  void update(const LAMBOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<LAMBParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
