#pragma once

/// \file
/// RaLars: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of RaLars (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct RaLarsOptions : detail::OptionsBase<RaLarsOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  RaLarsOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
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
  /// While the variance is not tractable (`sma_t <= 4`, the first steps), take the unrectified Adam
  /// step `m_hat / (sqrt(v_hat) + eps)` instead of the momentum `m_hat`. Default false.
  HOLOCRON_FIELD(bool, force_adaptive_momentum) = false;
  /// Bounds `(low, high)` for `||p||` in the trust ratio, with `0 <= low <= high` (`high` may be
  /// infinite). Default none, meaning (0, 10), as in the reference.
  HOLOCRON_FIELD(scale_clip_t, scale_clip) = std::nullopt;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the direction,
  /// so the decay stays outside the trust ratio's `||u||`; `||p||` is the decayed parameter's (as
  /// LAMB's, timm's `decoupled_decay`). Default false.
  HOLOCRON_FIELD(bool, decoupled_weight_decay) = false;

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
  static std::vector<std::string> fields_added_later() { return {"maximize", "decoupled_weight_decay", "state_precision", "kahan_summation"}; }
  /// These options as the functional layer's hyper-parameters.
  functional::RaLarsHyper hyper() const;
};

/// State RaLars keeps per parameter (conventions: see detail::ParamStateBase).
struct RaLarsParamState : detail::ParamStateBase<RaLarsParamState> {
  HOLOCRON_FIELDS;
  /// Number of updates of this parameter: `t` of the bias corrections, 1 on its first update.
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

/// RaLars: Rectified Adam (RAdam) with LARS trust ratios.
///
/// Papers: Liyuan Liu, Haoming Jiang, Pengcheng He, Weizhu Chen, Xiaodong Liu, Jianfeng Gao, Jiawei
/// Han, "On the Variance of the Adaptive Learning Rate and Beyond", 2019,
/// [arXiv:1908.03265](https://arxiv.org/abs/1908.03265) (RAdam), with the layer-wise scaling of
/// Yang You, Igor Gitman, Boris Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
/// [arXiv:1708.03888](https://arxiv.org/abs/1708.03888) (LARS).
///
/// Per parameter: moments as LAMB's; `sma_inf = 2 / (1 - beta2) - 1`,
/// `sma_t = sma_inf - 2 * t * beta2^t / (1 - beta2^t)`. When `sma_t > 4` the direction is the
/// rectified Adam step `r * m_hat / (sqrt(v_hat) + eps)`, otherwise `m_hat` (or the unrectified
/// Adam step with `force_adaptive_momentum`). Then `u += weight_decay * p` and LAMB's trust ratio
/// and update. `scale_clip`: none means (0, 10).
///
/// Difference from the reference (pylocron 0.3.0):
/// - `weight_decay < 0` is refused; pylocron accepts it.
class RaLars : public detail::Algorithm<RaLarsOptions, RaLarsParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit RaLars(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      RaLarsOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit RaLars(std::vector<torch::Tensor> params, RaLarsOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(RaLarsParamState& state, const torch::Tensor& param,
                  const RaLarsOptions& options) const override;
  void update(const RaLarsOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<RaLarsParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
