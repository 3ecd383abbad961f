#pragma once

/// \file
/// LARS: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of LARS (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct LARSOptions : detail::OptionsBase<LARSOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  LARSOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  HOLOCRON_FIELD(double, lr) = 1e-3;
  /// Momentum factor. Default 0 (no momentum buffer is kept); must be >= 0.
  HOLOCRON_FIELD(double, momentum) = 0.0;
  /// Dampening of the momentum: `buf = momentum * buf + (1 - dampening) * d`. Default 0; any
  /// finite value, but 0 with `nesterov`.
  HOLOCRON_FIELD(double, dampening) = 0.0;
  /// L2 penalty added to the gradient (`d = g + weight_decay * p`); it also enters the trust
  /// ratio's denominator. Default 0; must be >= 0.
  HOLOCRON_FIELD(double, weight_decay) = 0.0;
  /// Nesterov momentum (`u = d + momentum * buf`). Default false; requires `momentum > 0` and
  /// `dampening == 0`.
  HOLOCRON_FIELD(bool, nesterov) = false;
  /// Bounds `(low, high)` for `||p||` in the trust ratio, with `0 <= low <= high` (`high` may be
  /// infinite). Default none: `||p||` is used unclamped, as in the reference, which ignores
  /// this argument even when given (unlike pylocron).
  HOLOCRON_FIELD(scale_clip_t, scale_clip) = std::nullopt;
  /// Multiplies the trust ratio (timm's and apex's `trust_coeff`). Default 1, as the reference;
  /// must be >= 0.
  HOLOCRON_FIELD(double, trust_coeff) = 1.0;
  /// Added to the trust ratio's denominator. Default 0, as the reference; must be >= 0.
  HOLOCRON_FIELD(double, eps) = 0.0;
  /// LARC (apex, timm): the ratio becomes `min(ratio / lr, 1)`. Default false.
  HOLOCRON_FIELD(bool, trust_clip) = false;
  /// A trust ratio also where `weight_decay` is 0; false: ratio 1 there (plain SGD), as timm and
  /// apex. Default true, as the reference.
  HOLOCRON_FIELD(bool, always_adapt) = true;
  /// The ratio scales the direction `d` before it enters the momentum, and is 1 where `||g||` is
  /// 0, as timm's Lars and apex's LARC do; false: it scales the step after the momentum, as the
  /// reference. The two differ only with momentum or a zero gradient. Default false.
  HOLOCRON_FIELD(bool, trust_on_gradient) = false;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the direction:
  /// the trust ratio then has no `weight_decay * ||p||` in its denominator, and its `||p||` is the
  /// decayed parameter's (torch's `decoupled_weight_decay`). Default false.
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
  static std::vector<std::string> fields_added_later() {
    return {"trust_coeff", "eps", "trust_clip", "always_adapt", "trust_on_gradient", "maximize",
            "decoupled_weight_decay", "state_precision", "kahan_summation"};
  }
  /// These options as the functional layer's hyper-parameters.
  functional::LarsHyper hyper() const;
};

/// State LARS keeps per parameter. `momentum_buffer` is the reference's state key; `local_lr` is
/// kept for inspection only (the reference does not store it).
struct LARSParamState : detail::ParamStateBase<LARSParamState> {
  HOLOCRON_FIELDS;
  /// Momentum buffer: the first step's direction `d`, then `momentum * buf + (1 - dampening) * d`.
  /// Undefined while `momentum` is 0.
  HOLOCRON_FIELD(torch::Tensor, momentum_buffer);
  /// Trust ratio of the last step: `||p|| / (||g|| + weight_decay * ||p||)`, or 1 when either
  /// norm is 0.
  HOLOCRON_FIELD(double, local_lr) = 1.0;
  /// The Kahan compensation of a bfloat16 or float16 weight (the parameter's dtype); defined
  /// only with `kahan_summation`.
  HOLOCRON_FIELD(torch::Tensor, kahan_comp);
  /// Under state_precision "8bit", the scales of `momentum_buffer` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, momentum_buffer_absmax);

 public:
  /// The moments state_precision "8bit" keeps as codes, with their maps, in the order of the
  /// functional function's state lists.
  static c10::ArrayRef<detail::CodedMoment> coded_moments() {
    static constexpr detail::CodedMoment kMoments[] = {
        {"momentum_buffer", "momentum_buffer_absmax", true, detail::CodedMoment::KeptWith::momentum},
    };
    return kMoments;
  }
};

/// Layer-wise Adaptive Rate Scaling: SGD whose step is scaled per tensor by a trust ratio.
///
/// Paper: Yang You, Igor Gitman, Boris Ginsburg, "Large Batch Training of Convolutional
/// Networks", 2017, [arXiv:1708.03888](https://arxiv.org/abs/1708.03888).
///
/// Per parameter: `d = g + weight_decay * p`, `local_lr = ||p|| / (||g|| + weight_decay * ||p||)`
/// (1 when a norm is 0), `p -= lr * local_lr * u` where `u` is `d` without momentum, else the
/// momentum buffer (or `d + momentum * buf` with Nesterov). Norms are L2 norms over the tensor.
///
/// The options of timm's `Lars` and apex's `LARC` (their defaults give the reference's numbers):
/// `local_lr = trust_coeff * ||p|| / (||g|| + weight_decay * ||p|| + eps)`; `trust_clip` (LARC)
/// makes it `min(local_lr / lr, 1)`; `always_adapt` false leaves `local_lr = 1` where
/// `weight_decay` is 0; `trust_on_gradient` scales `d` by it before the momentum (`p -= lr * u`)
/// and takes 1 where `||g||` is 0. timm's `Lars(trust_coeff=0.001, eps=1e-8)` is these with
/// `trust_on_gradient` and `always_adapt` false.
///
/// Differences from the reference (pylocron 0.3.0):
/// - gradients are never modified; the reference writes `d` into `p.grad`;
/// - an explicit `scale_clip` clamps `||p||` in the trust ratio.
class LARS : public detail::Algorithm<LARSOptions, LARSParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit LARS(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      LARSOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit LARS(std::vector<torch::Tensor> params, LARSOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(LARSParamState& state, const torch::Tensor& param,
                  const LARSOptions& options) const override;
  void update(const LARSOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<LARSParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
