#pragma once

/// \file
/// AdaBelief: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of AdaBelief (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct AdaBeliefOptions : detail::OptionsBase<AdaBeliefOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  AdaBeliefOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  HOLOCRON_FIELD(double, lr) = 1e-3;
  /// Coefficients `(beta1, beta2)` of the moving averages of the gradient and of its square.
  /// Default (0.9, 0.999); each in [0, 1).
  HOLOCRON_FIELD(betas2_t, betas) = std::make_tuple(0.9, 0.999);
  /// Added to the denominator for numerical stability. Default 1e-8; must be >= 0.
  HOLOCRON_FIELD(double, eps) = 1e-8;
  /// L2 penalty added to the gradient: `g = g + weight_decay * p`. Default 0; must be >= 0.
  HOLOCRON_FIELD(double, weight_decay) = 0.0;
  /// AMSGrad: divide by the running maximum of `s` (kept in `max_exp_avg_sq`). Default false.
  HOLOCRON_FIELD(bool, amsgrad) = false;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the gradient
  /// (torch's `decoupled_weight_decay`, as AdamW). Default false.
  HOLOCRON_FIELD(bool, decoupled_weight_decay) = false;
  /// RAdam's rectification (timm's `rectify`): while the approximated SMA length `rho_t` of the
  /// second moment is >= 5, `p -= lr * r_t * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(s) + eps)`
  /// (no bias correction of `s`, and `s`, not its running maximum, even with `amsgrad`, as
  /// timm); below, see degenerated_to_sgd. Default false.
  HOLOCRON_FIELD(bool, rectify) = false;
  /// With `rectify`, while `rho_t < 5`: `p -= lr * m / (1 - beta1^t)` (a momentum step); false:
  /// no step (the weight decay still applies). Read only with `rectify`. Default true (timm's).
  HOLOCRON_FIELD(bool, degenerated_to_sgd) = true;
  /// With `decoupled_weight_decay`: `p *= 1 - weight_decay`, not scaled by `lr` (timm's);
  /// refused without it. Default false.
  HOLOCRON_FIELD(bool, fixed_decay) = false;
  /// Add `eps` into `s` after each update, `s = beta2 * s + (1 - beta2) * (g - m)^2 + eps` (the
  /// paper's Algorithm 1, the authors' and timm's code); stored, so it accumulates. Default false.
  HOLOCRON_FIELD(bool, eps_in_variance) = false;

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
    return {"maximize", "decoupled_weight_decay", "rectify", "degenerated_to_sgd", "fixed_decay",
            "eps_in_variance", "state_precision", "kahan_summation"};
  }
  /// These options as the functional layer's hyper-parameters.
  functional::AdaBeliefHyper hyper() const;
};

/// State AdaBelief keeps per parameter (conventions: see detail::ParamStateBase).
struct AdaBeliefParamState : detail::ParamStateBase<AdaBeliefParamState> {
  HOLOCRON_FIELDS;
  /// Number of updates of this parameter: `t` of the bias corrections, 1 on its first update.
  HOLOCRON_FIELD(int64_t, step) = 0;
  /// Moving average of the gradient (first moment `m`).
  HOLOCRON_FIELD(torch::Tensor, exp_avg);
  /// Moving average `s` of the squared deviation `(g - m)^2` (the "belief"), under Adam's key.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq);
  /// Running maximum of `exp_avg_sq`; defined only with `amsgrad`.
  HOLOCRON_FIELD(torch::Tensor, max_exp_avg_sq);
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

/// AdaBelief: Adam whose second moment tracks the gradient's deviation from its mean.
///
/// Paper: Juntang Zhuang, Tommy Tang, Yifan Ding, Sekhar Tatikonda, Nicha Dvornek, Xenophon
/// Papademetris, James S. Duncan, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
/// Observed Gradients", NeurIPS 2020, [arXiv:2010.07468](https://arxiv.org/abs/2010.07468).
///
/// Per parameter, with `g = g + weight_decay * p` (unless `decoupled_weight_decay`):
/// `m = beta1 * m + (1 - beta1) * g`,
/// `s = beta2 * s + (1 - beta2) * (g - m)^2` (with the updated `m`),
/// `p -= lr / (1 - beta1^t) * m / (sqrt(s) / sqrt(1 - beta2^t) + eps)`. As in the reference, `eps`
/// is not added into `s` (unless `eps_in_variance`) and the options and their checks are
/// torch.optim.Adam's. timm's `AdaBelief` is `decoupled_weight_decay`, `eps_in_variance` and
/// `rectify` with `eps = 1e-16`.
class AdaBelief : public detail::Algorithm<AdaBeliefOptions, AdaBeliefParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit AdaBelief(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdaBeliefOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit AdaBelief(std::vector<torch::Tensor> params, AdaBeliefOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(AdaBeliefParamState& state, const torch::Tensor& param,
                  const AdaBeliefOptions& options) const override;
  void update(const AdaBeliefOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<AdaBeliefParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
