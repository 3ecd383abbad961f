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
  /// Options with learning rate `lr` and every other field at its default.
  RaLarsOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  TORCH_ARG(double, lr) = 1e-3;
  /// Coefficients `(beta1, beta2)` of the moving averages of the gradient and of its square.
  /// Default (0.9, 0.999); each in [0, 1).
  TORCH_ARG(betas2_t, betas) = std::make_tuple(0.9, 0.999);
  /// Added to the denominator for numerical stability. Default 1e-8; must be >= 0.
  TORCH_ARG(double, eps) = 1e-8;
  /// Added to the direction as `weight_decay * p`, before the trust ratio. Default 0; must be >= 0
  /// (pylocron accepts a negative value).
  TORCH_ARG(double, weight_decay) = 0.0;
  /// While the variance is not tractable (`sma_t <= 4`, the first steps), take the unrectified Adam
  /// step `m_hat / (sqrt(v_hat) + eps)` instead of the momentum `m_hat`. Default false.
  TORCH_ARG(bool, force_adaptive_momentum) = false;
  /// Bounds `(low, high)` for `||p||` in the trust ratio, with `0 <= low <= high` (`high` may be
  /// infinite). Default none, meaning (0, 10), as in the reference.
  TORCH_ARG(scale_clip_t, scale_clip) = std::nullopt;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  TORCH_ARG(bool, maximize) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the direction,
  /// so the decay stays outside the trust ratio's `||u||`; `||p||` is the decayed parameter's (as
  /// LAMB's, timm's `decoupled_decay`). Default false.
  TORCH_ARG(bool, decoupled_weight_decay) = false;

 public:
  /// Each field, in order (see detail::OptionsBase).
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("lr", self.lr());
    visit("betas", self.betas());
    visit("eps", self.eps());
    visit("weight_decay", self.weight_decay());
    visit("force_adaptive_momentum", self.force_adaptive_momentum());
    visit("scale_clip", self.scale_clip());
    visit("maximize", self.maximize());
    visit("decoupled_weight_decay", self.decoupled_weight_decay());
  }
  /// Options that checkpoints written before they existed lack: those load with their defaults.
  static std::vector<std::string> fields_added_later() { return {"maximize", "decoupled_weight_decay"}; }
  /// These options as the functional layer's hyper-parameters.
  functional::RaLarsHyper hyper() const;
};

/// State RaLars keeps per parameter (conventions: see detail::ParamStateBase).
struct RaLarsParamState : detail::ParamStateBase<RaLarsParamState> {
  /// Number of updates of this parameter: `t` of the bias corrections, 1 on its first update.
  TORCH_ARG(int64_t, step) = 0;
  /// Moving average of the gradient (first moment `m`).
  TORCH_ARG(torch::Tensor, exp_avg);
  /// Moving average of the squared gradient (second moment `v`).
  TORCH_ARG(torch::Tensor, exp_avg_sq);
  /// Trust ratio of the last step: `clamp(||p||, scale_clip) / ||u||`, or 1 when either is 0.
  TORCH_ARG(double, local_lr) = 1.0;

 public:
  /// Each field, in order (see detail::ParamStateBase).
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("step", self.step());
    visit("exp_avg", self.exp_avg());
    visit("exp_avg_sq", self.exp_avg_sq());
    visit("local_lr", self.local_lr());
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
