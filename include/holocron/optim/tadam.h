#pragma once

/// \file
/// TAdam: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of TAdam (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct TAdamOptions : detail::OptionsBase<TAdamOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  TAdamOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  HOLOCRON_FIELD(double, lr) = 1e-3;
  /// Coefficients `(beta1, beta2)` of the moving averages of the gradient and of its square.
  /// Default (0.9, 0.999); each in [0, 1).
  HOLOCRON_FIELD(betas2_t, betas) = std::make_tuple(0.9, 0.999);
  /// Added to the denominator of the update and to `v` in the Student-t weight. Default 1e-8; must
  /// be >= 0.
  HOLOCRON_FIELD(double, eps) = 1e-8;
  /// L2 penalty added to the gradient: `g = g + weight_decay * p`. Default 0; must be >= 0.
  HOLOCRON_FIELD(double, weight_decay) = 0.0;
  /// AMSGrad: divide by the running maximum of the second moment (kept in `max_exp_avg_sq`).
  /// Default false.
  HOLOCRON_FIELD(bool, amsgrad) = false;
  /// Degrees of freedom of the Student-t distribution. Default none: each parameter's number of
  /// elements. Must be > 0 when given (pylocron accepts 0, which makes a step whose
  /// gradient equals the mean NaN).
  HOLOCRON_FIELD(dof_t, dof) = std::nullopt;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the gradient
  /// (torch's `decoupled_weight_decay`, as AdamW): the moments and the Mahalanobis weight see `g`.
  /// Default false.
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
  functional::TAdamHyper hyper() const;
};

/// State TAdam keeps per parameter (conventions: see detail::ParamStateBase).
struct TAdamParamState : detail::ParamStateBase<TAdamParamState> {
  HOLOCRON_FIELDS;
  /// Number of updates of this parameter: `t` of the bias corrections, 1 on its first update.
  HOLOCRON_FIELD(int64_t, step) = 0;
  /// Moving average of the gradient (first moment `m`).
  HOLOCRON_FIELD(torch::Tensor, exp_avg);
  /// Moving average of the squared gradient (second moment `v`).
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq);
  /// Running maximum of `exp_avg_sq`; defined only with `amsgrad`.
  HOLOCRON_FIELD(torch::Tensor, max_exp_avg_sq);
  /// Accumulated weight `W` of the first moment, `beta1 / (1 - beta1)` before the first update. A
  /// double here; the reference (and the Python package) keep it as a one-element tensor.
  HOLOCRON_FIELD(double, W_t) = 0.0;
  /// The Kahan compensation of a bfloat16 or float16 weight (the parameter's dtype); defined
  /// only with `kahan_summation`.
  HOLOCRON_FIELD(torch::Tensor, kahan_comp);
  /// Under state_precision "8bit", the scales of `exp_avg` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_absmax);
  /// Under state_precision "8bit", the scales of `exp_avg_sq` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq_absmax);
  /// Under state_precision "8bit", the scales of `max_exp_avg_sq` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, max_exp_avg_sq_absmax);

 public:
  /// The moments state_precision "8bit" keeps as codes, with their maps, in the order of the
  /// functional function's state lists.
  static c10::ArrayRef<detail::CodedMoment> coded_moments() {
    static constexpr detail::CodedMoment kMoments[] = {
        {"exp_avg", "exp_avg_absmax", true},
        {"exp_avg_sq", "exp_avg_sq_absmax", false},
        {"max_exp_avg_sq", "max_exp_avg_sq_absmax", false, detail::CodedMoment::KeptWith::amsgrad},
    };
    return kMoments;
  }
};

/// TAdam: Adam whose first moment is a Student-t estimate, robust to outlier gradients.
///
/// Paper: Wendyam Eric Lionel Ilboudo, Taisuke Kobayashi, Kenji Sugimoto, "TAdam: A Robust
/// Stochastic Gradient Optimizer", 2020, [arXiv:2003.00179](https://arxiv.org/abs/2003.00179).
///
/// Per parameter of `d` elements, with `g = g + weight_decay * p` and `m`, `v` before this step:
/// `w = (dof + d) / (dof + sum((g - m)^2 / (v + eps)))`, `m = W / (W + w) * m + w / (W + w) * g`,
/// `W = W * (2 * beta1 - 1) / beta1 + w`, `v = beta2 * v + (1 - beta2) * g^2`,
/// `p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`. `dof` defaults to each
/// parameter's number of elements.
///
/// Difference from the reference (pylocron 0.3.0):
/// - 0-d (scalar) parameters work, with the result of the same value in a one-element
///   tensor; the reference fails on them.
class TAdam : public detail::Algorithm<TAdamOptions, TAdamParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit TAdam(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      TAdamOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit TAdam(std::vector<torch::Tensor> params, TAdamOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(TAdamParamState& state, const torch::Tensor& param,
                  const TAdamOptions& options) const override;
  void update(const TAdamOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<TAdamParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
