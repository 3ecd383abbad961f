#pragma once

/// \file
/// AdamP: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of AdamP (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct AdamPOptions : detail::OptionsBase<AdamPOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  AdamPOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  HOLOCRON_FIELD(double, lr) = 1e-3;
  /// Coefficients `(beta1, beta2)` of the moving averages of the gradient and of its square.
  /// Default (0.9, 0.999); each in [0, 1).
  HOLOCRON_FIELD(betas2_t, betas) = std::make_tuple(0.9, 0.999);
  /// Added to the denominator for numerical stability. Default 1e-8; must be >= 0.
  HOLOCRON_FIELD(double, eps) = 1e-8;
  /// L2 penalty added to the gradient: `g = g + weight_decay * p`. Default 0; must be >= 0.
  HOLOCRON_FIELD(double, weight_decay) = 0.0;
  /// AMSGrad: divide by the running maximum of the second moment (kept in `max_exp_avg_sq`).
  /// Default false.
  HOLOCRON_FIELD(bool, amsgrad) = false;
  /// Threshold of the scale-invariance test: the projection applies when
  /// `cos(p, g) < delta / sqrt(numel(p))`. Default 0.1; any finite value.
  HOLOCRON_FIELD(double, delta) = 0.1;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the gradient
  /// (torch's `decoupled_weight_decay`, as AdamW): the moments and the cosine see `g`. Default false.
  HOLOCRON_FIELD(bool, decoupled_weight_decay) = false;
  /// Nesterov's direction (timm's, the authors'): `q` from `beta1 * m + (1 - beta1) * g` in place
  /// of `m`. Default false.
  HOLOCRON_FIELD(bool, nesterov) = false;
  /// The decoupled decay of a parameter the projection projects becomes
  /// `p *= 1 - lr * weight_decay * wd_ratio` (timm's, the authors'; 0.1 there). Other than 1 only
  /// with `channel_projection` and `decoupled_weight_decay`. Default 1; must be >= 0.
  HOLOCRON_FIELD(double, wd_ratio) = 1.0;
  /// timm's and the authors' projection instead of the reference's flattened one, for parameters
  /// of more than one dimension only: if `|cos|` of every output channel's `p` and `g` (the rows
  /// of `p.reshape(p.size(0), -1)`) is below `delta / sqrt(numel / size(0))`, each channel's `q`
  /// loses its component along that channel's `p / (||p|| + eps)`; else, if the whole tensor's
  /// `|cos|` is below `delta / sqrt(numel)`, the whole `q` loses it; the cosines' norms are
  /// clamped at `eps`, and the decision and the projection are of `p` before its decay. On shards,
  /// functional::adamp_ needs Sharding::numels and Sharding::channel_layouts. Default false.
  HOLOCRON_FIELD(bool, channel_projection) = false;
  /// Cautious Optimizers (Liang et al. 2024), as pytorch-optimizer's `AdamP(cautious=True)`: `m`
  /// enters `q` only where `m * g > 0`, times `numel / (kept + 1)` (the whole tensor's count, over
  /// all shards), before Nesterov's mix and the projection. timm's `caution` for AdamP is another,
  /// spherical, rule, not this one. Default false.
  HOLOCRON_FIELD(bool, caution) = false;

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
    return {"maximize", "decoupled_weight_decay", "nesterov", "wd_ratio", "channel_projection", "caution", "state_precision", "kahan_summation"};
  }
  /// These options as the functional layer's hyper-parameters.
  functional::AdamPHyper hyper() const;
};

/// State AdamP keeps per parameter (conventions: see detail::ParamStateBase).
struct AdamPParamState : detail::ParamStateBase<AdamPParamState> {
  HOLOCRON_FIELDS;
  /// Number of updates of this parameter: `t` of the bias corrections, 1 on its first update.
  HOLOCRON_FIELD(int64_t, step) = 0;
  /// Moving average of the gradient (first moment `m`).
  HOLOCRON_FIELD(torch::Tensor, exp_avg);
  /// Moving average of the squared gradient (second moment `v`).
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

/// AdamP: Adam that removes the radial part of updates of scale-invariant weights.
///
/// Paper: Byeongho Heo, Sanghyuk Chun, Seong Joon Oh, Dongyoon Han, Sangdoo Yun, Gyuwan Kim,
/// Youngjung Uh, Jung-Woo Ha, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
/// Scale-invariant Weights", ICLR 2021, [arXiv:2006.08217](https://arxiv.org/abs/2006.08217).
///
/// Per parameter, as the reference: Adam moments of `g = g + weight_decay * p`,
/// `q = m_hat / (sqrt(v_hat) + eps)`; when the cosine of `p` and `g` (over the flattened tensors)
/// is below `delta / sqrt(numel(p))`, `q` loses its component along `n = p / (||p|| + eps)`; then
/// `p -= lr * q`. timm's `AdamP` is `decoupled_weight_decay`, `channel_projection` and
/// `wd_ratio(0.1)`.
class AdamP : public detail::Algorithm<AdamPOptions, AdamPParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit AdamP(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdamPOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit AdamP(std::vector<torch::Tensor> params, AdamPOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(AdamPParamState& state, const torch::Tensor& param,
                  const AdamPOptions& options) const override;
  void update(const AdamPOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<AdamPParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
