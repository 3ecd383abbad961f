#pragma once

/// \file
/// Adan: options, param state and optimizer.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of Adan (a parameter group's hyper-parameters).
/// Conventions (setters, checks): see detail::OptionsBase.
struct AdanOptions : detail::OptionsBase<AdanOptions> {
  HOLOCRON_FIELDS;
  /// Options with learning rate `lr` and every other field at its default.
  AdanOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  /// Learning rate. Default 1e-3; must be >= 0.
  HOLOCRON_FIELD(double, lr) = 1e-3;
  /// Coefficients `(beta1, beta2, beta3)` of the moving averages of the gradient, of its difference
  /// and of the squared Nesterov direction. Default (0.98, 0.92, 0.99); each in [0, 1).
  HOLOCRON_FIELD(betas3_t, betas) = std::make_tuple(0.98, 0.92, 0.99);
  /// Added to the denominator for numerical stability. Default 1e-8; must be >= 0.
  HOLOCRON_FIELD(double, eps) = 1e-8;
  /// Added to the gradient as `weight_decay * p` (unless `decoupled_weight_decay`), and divides `p`
  /// by `1 + weight_decay * lr` after the update (unless `no_prox`). Default 0; must be >= 0.
  HOLOCRON_FIELD(double, weight_decay) = 0.0;
  /// AMSGrad: divide by the running maximum of `n` (kept in `max_exp_avg_delta`). Default false.
  HOLOCRON_FIELD(bool, amsgrad) = false;

  /// Ascend instead of descend (torch.optim's `maximize`): each gradient is read as `-g`; the
  /// gradients are not modified. Default false.
  HOLOCRON_FIELD(bool, maximize) = false;
  /// No `weight_decay * p` in the gradient: the decay is then only the division after the update
  /// (or `no_prox`'s product), as in the authors' code and timm's Adan. Default false.
  HOLOCRON_FIELD(bool, decoupled_weight_decay) = false;
  /// `p *= 1 - weight_decay * lr` before the update instead of `p /= 1 + weight_decay * lr` after
  /// it (the authors' and timm's `no_prox`). Default false.
  HOLOCRON_FIELD(bool, no_prox) = false;
  /// Global gradient-norm clipping, as the authors' code: before anything reads them, the
  /// gradients of every group are multiplied by `min(max_grad_norm / (norm + eps), 1)`, `norm`
  /// being the one norm of all of them (unscaled, over all shards) and `eps` the group's; they are
  /// not modified. Groups holding different values are clipped apart. Default none (no clipping);
  /// must be > 0.
  HOLOCRON_FIELD(optional_real_t, max_grad_norm) = std::nullopt;
  /// Cautious Optimizers (Liang et al. 2024; timm's `caution`): the first moment's term of the
  /// update only where `m * g > 0`, rescaled by `1 / max(fraction kept, 1e-3)` (the fraction of the
  /// whole tensor, over all shards); one more read of `g` and `m` per step. Default false.
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
    return {"maximize", "decoupled_weight_decay", "no_prox", "max_grad_norm", "caution", "state_precision", "kahan_summation"};
  }
  /// These options as the functional layer's hyper-parameters.
  functional::AdanHyper hyper() const;
};

/// State Adan keeps per parameter (conventions: see detail::ParamStateBase).
struct AdanParamState : detail::ParamStateBase<AdanParamState> {
  HOLOCRON_FIELDS;
  /// Number of updates of this parameter: `t` of the bias corrections, 1 on its first update.
  HOLOCRON_FIELD(int64_t, step) = 0;
  /// Moving average of the gradient (first moment `m`).
  HOLOCRON_FIELD(torch::Tensor, exp_avg);
  /// Moving average `v` of the gradient difference `diff` (not of a square, despite the reference's
  /// key).
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq);
  /// Moving average `n` of the squared Nesterov direction `(g + beta2 * diff)^2`.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_delta);
  /// Running maximum of `exp_avg_delta`; defined only with `amsgrad`.
  HOLOCRON_FIELD(torch::Tensor, max_exp_avg_delta);
  /// The previous step's `g` (weight decay included), updated every step (unlike pylocron).
  HOLOCRON_FIELD(torch::Tensor, prev_grad);
  /// The Kahan compensation of a bfloat16 or float16 weight (the parameter's dtype); defined
  /// only with `kahan_summation`.
  HOLOCRON_FIELD(torch::Tensor, kahan_comp);
  /// Under state_precision "8bit", the scales of `exp_avg` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_absmax);
  /// Under state_precision "8bit", the scales of `exp_avg_sq` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_sq_absmax);
  /// Under state_precision "8bit", the scales of `exp_avg_delta` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, exp_avg_delta_absmax);
  /// Under state_precision "8bit", the scales of `max_exp_avg_delta` where it holds 8-bit codes (one
  /// float32 per block of 256 elements); else undefined.
  HOLOCRON_FIELD(torch::Tensor, max_exp_avg_delta_absmax);

 public:
  /// The moments state_precision "8bit" keeps as codes, with their maps, in the order of the
  /// functional function's state lists.
  static c10::ArrayRef<detail::CodedMoment> coded_moments() {
    static constexpr detail::CodedMoment kMoments[] = {
        {"exp_avg", "exp_avg_absmax", true},
        {"exp_avg_sq", "exp_avg_sq_absmax", true},
        {"exp_avg_delta", "exp_avg_delta_absmax", false},
        {"max_exp_avg_delta", "max_exp_avg_delta_absmax", false, detail::CodedMoment::KeptWith::amsgrad},
    };
    return kMoments;
  }
};

/// Adan: adaptive Nesterov momentum, from moving averages of the gradient and of its differences.
///
/// Paper: Xingyu Xie, Pan Zhou, Huan Li, Zhouchen Lin, Shuicheng Yan, "Adan: Adaptive Nesterov
/// Momentum Algorithm for Faster Optimizing Deep Models", 2022,
/// [arXiv:2208.06677](https://arxiv.org/abs/2208.06677).
///
/// Per parameter, with `g = g + weight_decay * p` (unless `decoupled_weight_decay`) and
/// `diff = g - prev_grad`:
/// `m = beta1 * m + (1 - beta1) * g`, `v = beta2 * v + (1 - beta2) * diff`,
/// `n = beta3 * n + (1 - beta3) * (g + beta2 * diff)^2`,
/// `p -= lr * (m / bc1 + beta2 * v / bc2) / (sqrt(n) / sqrt(bc3) + eps)` with `bcK = 1 - betaK^t`,
/// then `p /= 1 + weight_decay * lr` when `weight_decay != 0` (both weight decay terms are the
/// reference's). The authors' and timm's Adan is `decoupled_weight_decay(true)` (no L2 term),
/// with `no_prox` for their `adanw` and `max_grad_norm` for the authors' clipping.
///
/// Difference from the reference (pylocron 0.3.0):
/// - `prev_grad` is kept up to date: it holds the previous step's `g`, and a parameter's
///   first `diff` is zero, as in the paper and its authors' code. The reference never updates it,
///   so its `diff` is always the whole gradient.
class Adan : public detail::Algorithm<AdanOptions, AdanParamState> {
 public:
  /// Optimizes `param_groups` (see OptimizerBase: defaults, what throws).
  explicit Adan(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdanOptions defaults = {});
  /// Optimizes `params` as one group with options `defaults`.
  explicit Adan(std::vector<torch::Tensor> params, AdanOptions defaults = {});

 protected:
  /// \cond INTERNAL

  void init_state(AdanParamState& state, const torch::Tensor& param,
                  const AdanOptions& options) const override;
  void update(const AdanOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<AdanParamState*>& states) override;
  /// \endcond
};

}  // namespace holocron::optim
