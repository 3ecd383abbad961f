#pragma once

/// \file
/// The functional layer: the math of every algorithm, over lists of tensors.

#include <ATen/Tensor.h>
#include <c10/util/ArrayRef.h>

#include "holocron/optim/detail/fields.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

/// \namespace holocron::optim::functional
/// The math of every algorithm, once: one function per algorithm updates one parameter group
/// (lists of tensors of equal length) in place, and both the C++ classes and the Python package
/// (`torch.ops.holocron`) call it.
///
/// Each function checks its hyper-parameters and every list before it writes anything, so a call
/// that throws leaves all tensors as they were. `steps` are the per-parameter step counters
/// *after* this step's increment (1 on a parameter's first update), as the reference counts them.
/// State tensors have their parameter's shape and device, and its dtype or float32 or bfloat16
/// (lean or mixed-precision state: the math still runs in the parameter's math type, float32 for
/// half and bfloat16, and the state is rounded to its dtype when stored; the fused kernels take
/// one dtype for all of a tensor's state, and any mix runs the ATen ops). Fused CPU kernels or
/// ATen ops run the math: see cpu_capability(). Every algorithm's function takes a last, optional
/// GradScaling (`scaling`) for mixed precision.
namespace holocron::optim::functional {

/// A list of tensors, one per parameter of a group (`std::vector<at::Tensor>` converts to it).
using TensorList = c10::ArrayRef<at::Tensor>;
/// Bounds `(low, high)` of a parameter's norm in a trust ratio, `0 <= low <= high`.
using ScaleClip = std::pair<double, double>;

/// Mixed-precision loss scaling, as torch's fused Adam takes it from `torch.amp.GradScaler`.
///
/// Both tensors are optional (undefined: not used) and hold one element. When `found_inf` is
/// nonzero the step is skipped: nothing is written (the functions that return trust ratios return
/// an empty vector). Otherwise gradients are read as `g * inv`, with `inv` the float32 reciprocal
/// of `grad_scale`, as GradScaler's own unscaling computes it; the gradients themselves are not
/// modified. The values are read on the host: for a CUDA tensor that is a synchronization.
struct GradScaling {
  /// No scaling and no clipping.
  GradScaling() = default;
  /// Loss scaling as GradScaler hands it over: `{grad_scale, found_inf}`.
  GradScaling(at::Tensor grad_scale, at::Tensor found_inf = {})
      : grad_scale(std::move(grad_scale)), found_inf(std::move(found_inf)) {}
  /// The loss scale the gradients carry (finite, > 0).
  at::Tensor grad_scale;
  /// Nonzero when a gradient holds an inf or a NaN.
  at::Tensor found_inf;
  /// Global gradient-norm clipping (LAMB's and Adan's `max_grad_norm`): the norm of the unscaled
  /// gradients of everything clipped together (one element, as the square root of the sum of
  /// grad_squared_norms() over every group), or undefined for no clipping. The gradients are then
  /// also divided by `max(1, grad_norm / max_grad_norm)` as they are read (timm's and apex's
  /// LAMB), or for Adan multiplied by `min(max_grad_norm / (grad_norm + eps), 1)` (its authors'
  /// rule, with the group's `eps`); a NaN norm makes them NaN, as dividing by it would.
  at::Tensor grad_norm;
  /// The bound of `grad_norm` (> 0); read only when `grad_norm` is defined.
  double max_grad_norm = 1.0;
  /// Ascend (torch.optim's `maximize`): every read of a gradient reads `-g`, as minimizing the
  /// negated loss would. The gradients are not modified.
  bool maximize = false;
  /// Kahan-compensated weights (the options' `kahan_summation`): empty, or one tensor per
  /// parameter, undefined where its weight is not compensated, else of a bfloat16 or float16
  /// parameter's shape, dtype and device. A compensated weight is `p + c`: every read of the
  /// parameter reads that sum in float32, and the update stores `p` = the new weight rounded to
  /// the parameter's dtype and `c` = what the rounding dropped (rounded to that dtype), so that
  /// updates below half a unit in the last place of `p` accumulate in `c` instead of vanishing.
  std::vector<at::Tensor> compensation;
  /// 8-bit block-wise state (quantization.h): the scales of the state tensors kept as codes. A
  /// state tensor of dtype uint8, in one of the lists an algorithm keeps its moments in, holds
  /// the codes of its parameter's shape (contiguous); its scales are the next entry here, in the
  /// order of the algorithm's state arguments, list by list and parameter by parameter: float32,
  /// one per block of kQuantizationBlock elements. Its values are decoded before the update reads
  /// them, and the update stores the new values encoded, each block with its new largest
  /// magnitude as scale (first moments and momentum through the signed map, second moments and
  /// their maxima through the unsigned one). Which lists take codes is stated per algorithm; the
  /// other state stays float32 beside them. The math is that of float32 state.
  std::vector<at::Tensor> state_absmax;
};

/// Parameters split across processes (FSDP2 or DTensor shards, or any sharding of one's own):
/// what a step over this process's local shards needs to equal the step over the whole tensors.
///
/// The algorithms with whole-tensor quantities (the norms of LARS, LAMB and RaLars, TAdam's
/// Mahalanobis sum, AdamP's cosine and projection, Scout's coherence, the cautious mask's count of
/// Adan and AdEMAMix with `caution`) first sum them per tensor
/// over the local shards, hand these partial sums to `all_reduce` (once per call, for all tensors
/// of the group), and take every decision from what it leaves. Element-wise algorithms need none
/// of this.
struct Sharding {
  /// Called with this process's partial sums, a float64 CPU tensor of shape `[tensors, k]`; must
  /// leave in it the sums over all shards of each tensor (an all-reduce over the processes that
  /// hold them). Empty: the tensors are whole. Every check has run before it is called; if it
  /// throws (a failed collective), the fused kernels of LAMB, RaLars and AdamP may already have
  /// advanced the float and double moments, and Scout's statistics hold this step's change.
  std::function<void(at::Tensor& partial_sums)> all_reduce;
  /// Elements of each whole tensor, one per parameter, where the math counts them (TAdam's
  /// weight and default dof, AdamP's threshold, the cautious mask's mean). Empty: each local
  /// tensor's own count.
  std::vector<int64_t> numels;
  /// Where a local tensor's elements lie among the output channels (the rows of dimension 0) of
  /// its whole tensor, which AdamP's `channel_projection` takes one by one: the whole tensor has
  /// `channels` of them (0 where it has one dimension), and the local element k (in row-major
  /// order) lies in channel `(first + k) / width`. This says both what FSDP2 keeps (a range of
  /// rows: `width` the local row's length, `first` its first row times it), what tensor
  /// parallelism keeps (a part of every row) and what a flat partition keeps (any range of the
  /// flattened tensor: `width` the whole row's length, `first` the range's start).
  struct ChannelLayout {
    /// Output channels of the whole tensor (its size(0)); 0 where it has one dimension.
    int64_t channels = 0;
    /// Offset of the local element 0, counted in elements of `width` per channel.
    int64_t first = 0;
    /// Local elements per channel's run: the local row's length, or the whole row's.
    int64_t width = 1;
  };
  /// One per parameter. Empty: each local tensor is whole.
  std::vector<ChannelLayout> channel_layouts;
};

/// Hyper-parameters of lars_(); fields as in LARSOptions.
struct LarsHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Momentum factor (>= 0); 0: no momentum buffer.
  HOLOCRON_HYPER(double, momentum);
  /// Dampening of the momentum (finite; 0 with `nesterov`).
  HOLOCRON_HYPER(double, dampening);
  /// L2 penalty added to the gradient as `weight_decay * p` (>= 0). It also enters the trust ratio.
  HOLOCRON_HYPER(double, weight_decay);
  /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
  HOLOCRON_HYPER(bool, nesterov);
  /// Bounds of `||p||` in the trust ratio; none: unclamped (unlike pylocron: an explicit clip bounds it).
  HOLOCRON_HYPER(std::optional<ScaleClip>, scale_clip);
  /// Multiplies the trust ratio (timm's and apex's `trust_coeff`, >= 0).
  HOLOCRON_HYPER(double, trust_coeff) = 1.0;
  /// Added to the trust ratio's denominator (>= 0).
  HOLOCRON_HYPER(double, eps) = 0.0;
  /// LARC: the ratio becomes `min(ratio / lr, 1)`.
  HOLOCRON_HYPER(bool, trust_clip) = false;
  /// A trust ratio also where `weight_decay` is 0; false: ratio 1 there (timm, apex).
  HOLOCRON_HYPER(bool, always_adapt) = true;
  /// The ratio scales the direction before the momentum (timm's Lars, apex's LARC), and is 1 where
  /// the gradient's norm is 0; false: it scales the step after the momentum, as the reference.
  HOLOCRON_HYPER(bool, trust_on_gradient) = false;
  /// `p *= 1 - lr * weight_decay` before the step instead of `weight_decay * p` in the direction:
  /// the ratio's denominator then has no `weight_decay * ||p||`, and its `||p||` is the decayed one.
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
};

/// One LARS step (see LARS). Gradients are not modified (unlike pylocron).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param momentum_buffers Momentum buffers, one per parameter; only read when
///   `hyper.momentum != 0` (may be empty otherwise).
/// \param buffer_is_new One flag per parameter: `true` initialises that buffer to this step's
///   direction (a parameter's first step with momentum).
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \param sharding Set when the tensors are shards of larger ones: see Sharding.
/// \return The trust ratio (local lr) used for each tensor.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
std::vector<double> lars_(TensorList params, TensorList grads, TensorList momentum_buffers,
                          c10::ArrayRef<bool> buffer_is_new, const LarsHyper& hyper,
                          const GradScaling& scaling = {},
    const Sharding& sharding = {});

/// Hyper-parameters of lamb_(); fields as in LAMBOptions.
struct LambHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Coefficient of the moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta1);
  /// Coefficient of the moving average of the squared gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta2);
  /// Added to the denominator (>= 0).
  HOLOCRON_HYPER(double, eps);
  /// Added as `weight_decay * p` (>= 0; pylocron accepts a negative one).
  HOLOCRON_HYPER(double, weight_decay);
  /// Bounds of `||p||` in the trust ratio (LAMBOptions' none is (0, 10)).
  HOLOCRON_HYPER(ScaleClip, scale_clip);
  /// Divides the moments by their bias corrections `1 - beta^t` (timm, apex).
  HOLOCRON_HYPER(bool, bias_correction) = false;
  /// The gradient enters the first moment weighted `1 - beta1`; false: weighted 1 (timm, apex).
  HOLOCRON_HYPER(bool, grad_averaging) = true;
  /// Caps the trust ratio at 1 (LAMBC).
  HOLOCRON_HYPER(bool, trust_clip) = false;
  /// A trust ratio where `weight_decay` is 0 too; false: ratio 1 there (timm, apex).
  HOLOCRON_HYPER(bool, always_adapt) = true;
  /// `p *= 1 - lr * weight_decay` before the step, outside the direction and the trust ratio's
  /// `||u||`; `||p||` is the decayed parameter's (timm's `decoupled_decay`).
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
  /// Cautious Optimizers (timm's `caution`): the Adam step before the weight decay only where it
  /// agrees in sign with `g`, times `1 / max(mean(kept), 1e-3)`; the trust ratio is of the result.
  HOLOCRON_HYPER(bool, caution) = false;
};

/// One LAMB step (see LAMB).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param exp_avgs First moments, one per parameter, updated in place.
/// \param exp_avg_sqs Second moments, one per parameter, updated in place.
/// \param steps This step's count (>= 1) per parameter: what bias correction reads.
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \param sharding Set when the tensors are shards of larger ones: see Sharding.
/// \return The trust ratio (local lr) used for each tensor.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
std::vector<double> lamb_(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                          const LambHyper& hyper,
                          const GradScaling& scaling = {},
    const Sharding& sharding = {});
/// lamb_() without step counts, as before `bias_correction` existed.
/// \throws c10::ValueError if `hyper.bias_correction` is set: it needs the steps.
std::vector<double> lamb_(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, const LambHyper& hyper,
                          const GradScaling& scaling = {}, const Sharding& sharding = {});

/// Hyper-parameters of ralars_(); fields as in RaLarsOptions.
struct RaLarsHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Coefficient of the moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta1);
  /// Coefficient of the moving average of the squared gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta2);
  /// Added to the denominator (>= 0).
  HOLOCRON_HYPER(double, eps);
  /// Added as `weight_decay * p` (>= 0; pylocron accepts a negative one).
  HOLOCRON_HYPER(double, weight_decay);
  /// Unrectified Adam step while `sma_t <= 4`, instead of the momentum.
  HOLOCRON_HYPER(bool, force_adaptive_momentum);
  /// Bounds of `||p||` in the trust ratio (RaLarsOptions' none is (0, 10)).
  HOLOCRON_HYPER(ScaleClip, scale_clip);
  /// Maximum length of the approximated SMA (finite when given); none: `2 / (1 - beta2) - 1`.
  /// The reference fixes it in the group on its first step.
  HOLOCRON_HYPER(std::optional<double>, sma_inf) = std::nullopt;
  /// `p *= 1 - lr * weight_decay` before the step, outside the direction and the trust ratio's
  /// `||u||`; `||p||` is the decayed parameter's (as LAMB's).
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
};

/// One RaLars step (see RaLars).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param exp_avgs First moments, one per parameter, updated in place.
/// \param exp_avg_sqs Second moments, one per parameter, updated in place.
/// \param steps Each parameter's step counter after this step's increment (1 on its first
///   update).
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \param sharding Set when the tensors are shards of larger ones: see Sharding.
/// \return The trust ratio (local lr) used for each tensor.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
std::vector<double> ralars_(TensorList params, TensorList grads, TensorList exp_avgs,
                            TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                            const RaLarsHyper& hyper, const GradScaling& scaling = {},
    const Sharding& sharding = {});

/// Hyper-parameters of tadam_(); fields as in TAdamOptions.
struct TAdamHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Coefficient of the moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta1);
  /// Coefficient of the moving average of the squared gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta2);
  /// Added to the denominator (>= 0).
  HOLOCRON_HYPER(double, eps);
  /// L2 penalty added to the gradient as `weight_decay * p` (>= 0).
  HOLOCRON_HYPER(double, weight_decay);
  /// Divide by the running maximum of the second moment.
  HOLOCRON_HYPER(bool, amsgrad);
  /// Degrees of freedom of the Student-t estimate (>= 0); none: each parameter's number of
  /// elements.
  HOLOCRON_HYPER(std::optional<double>, dof);  // none: the parameter's number of elements; > 0 (unlike pylocron)
  /// `p *= 1 - lr * weight_decay` before the update instead of `weight_decay * p` in the gradient.
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
};

/// One TAdam step (see TAdam). 0-d parameters work (unlike pylocron).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param exp_avgs First moments, one per parameter, updated in place.
/// \param exp_avg_sqs Second moments, one per parameter, updated in place.
/// \param max_exp_avg_sqs Running maxima of the second moments; read only with `hyper.amsgrad`
///   (may be empty otherwise).
/// \param moment_weights The reference's `W_t`, one per parameter (`beta1 / (1 - beta1)` before
///   a parameter's first step); read and advanced.
/// \param steps Each parameter's step counter after this step's increment (1 on its first
///   update).
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \param sharding Set when the tensors are shards of larger ones: see Sharding.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
void tadam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, std::vector<double>& moment_weights,
            c10::ArrayRef<int64_t> steps, const TAdamHyper& hyper, const GradScaling& scaling = {},
    const Sharding& sharding = {});

/// Hyper-parameters of adabelief_(); fields as in AdaBeliefOptions.
struct AdaBeliefHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Coefficient of the moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta1);
  /// Coefficient of the moving average of the squared deviation, in [0, 1).
  HOLOCRON_HYPER(double, beta2);
  /// Added to the denominator (>= 0).
  HOLOCRON_HYPER(double, eps);
  /// L2 penalty added to the gradient as `weight_decay * p` (>= 0).
  HOLOCRON_HYPER(double, weight_decay);
  /// Divide by the running maximum of the second moment.
  HOLOCRON_HYPER(bool, amsgrad);
  /// `p *= 1 - lr * weight_decay` before the update instead of `weight_decay * p` in the gradient.
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
  /// RAdam's rectification of the step (timm's).
  HOLOCRON_HYPER(bool, rectify) = false;
  /// With `rectify`, a momentum step where the rectification is undefined; false: no step.
  HOLOCRON_HYPER(bool, degenerated_to_sgd) = true;
  /// Decoupled decay `p *= 1 - weight_decay` (needs `decoupled_weight_decay`).
  HOLOCRON_HYPER(bool, fixed_decay) = false;
  /// Add `eps` into the stored second moment after each update.
  HOLOCRON_HYPER(bool, eps_in_variance) = false;
};

/// One AdaBelief step (see AdaBelief).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param exp_avgs First moments, one per parameter, updated in place.
/// \param exp_avg_sqs Moving averages of the squared deviation `(g - m)^2`, one per parameter,
///   updated in place.
/// \param max_exp_avg_sqs Their running maxima; read only with `hyper.amsgrad` (may be empty
///   otherwise).
/// \param steps Each parameter's step counter after this step's increment (1 on its first
///   update).
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
void adabelief_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                const AdaBeliefHyper& hyper, const GradScaling& scaling = {});

/// Hyper-parameters of adamp_(); fields as in AdamPOptions.
struct AdamPHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Coefficient of the moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta1);
  /// Coefficient of the moving average of the squared gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta2);
  /// Added to the denominator (>= 0).
  HOLOCRON_HYPER(double, eps);
  /// L2 penalty added to the gradient as `weight_decay * p` (>= 0).
  HOLOCRON_HYPER(double, weight_decay);
  /// Divide by the running maximum of the second moment.
  HOLOCRON_HYPER(bool, amsgrad);
  /// Projection threshold: applies when `cos(p, g) < delta / sqrt(numel(p))` (finite).
  HOLOCRON_HYPER(double, delta);
  /// `p *= 1 - lr * weight_decay` before the update instead of `weight_decay * p` in the gradient.
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
  /// Nesterov's direction: `beta1 * m + (1 - beta1) * g` in place of `m` (timm's).
  HOLOCRON_HYPER(bool, nesterov) = false;
  /// Multiplies the decoupled decay of a projected parameter (>= 0; other than 1 only with
  /// `channel_projection` and `decoupled_weight_decay`).
  HOLOCRON_HYPER(double, wd_ratio) = 1.0;
  /// timm's and the authors' projection: channel-wise, then layer-wise, with `|cos|` and `eps`,
  /// for parameters of more than one dimension only.
  HOLOCRON_HYPER(bool, channel_projection) = false;
  /// pytorch-optimizer's cautious AdamP: `m` only where `m * g > 0`, times `numel / (kept + 1)`.
  HOLOCRON_HYPER(bool, caution) = false;
};

/// One AdamP step (see AdamP).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param exp_avgs First moments, one per parameter, updated in place.
/// \param exp_avg_sqs Second moments, one per parameter, updated in place.
/// \param max_exp_avg_sqs Their running maxima; read only with `hyper.amsgrad` (may be empty
///   otherwise).
/// \param steps Each parameter's step counter after this step's increment (1 on its first
///   update).
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \param sharding Set when the tensors are shards of larger ones: see Sharding.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
void adamp_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& hyper,
            const GradScaling& scaling = {},
    const Sharding& sharding = {});

/// Hyper-parameters of adan_(); fields as in AdanOptions.
struct AdanHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Coefficient of the moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta1);
  /// Coefficient of the moving average of the gradient difference, in [0, 1).
  HOLOCRON_HYPER(double, beta2);
  /// Coefficient of the moving average of the squared Nesterov direction, in [0, 1).
  HOLOCRON_HYPER(double, beta3);
  /// Added to the denominator (>= 0).
  HOLOCRON_HYPER(double, eps);
  /// Added to the gradient as `weight_decay * p` (unless decoupled); also divides `p` by
  /// `1 + weight_decay * lr` after the update (or, with `no_prox`, multiplies it by
  /// `1 - weight_decay * lr` before). Must be >= 0.
  HOLOCRON_HYPER(double, weight_decay);
  /// Divide by the running maximum of `exp_avg_deltas`.
  HOLOCRON_HYPER(bool, amsgrad);
  /// No `weight_decay * p` in the gradient: the decay is only the proximal division (or the
  /// `no_prox` product), as the authors' code and timm's Adan.
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
  /// `p *= 1 - weight_decay * lr` before the update instead of `p /= 1 + weight_decay * lr` after
  /// (the authors' and timm's `no_prox`).
  HOLOCRON_HYPER(bool, no_prox) = false;
  /// Cautious Optimizers (timm's `caution`): the first moment's term only where `m * g > 0`, times
  /// `1 / max(mean(m * g > 0), 1e-3)`.
  HOLOCRON_HYPER(bool, caution) = false;
};

/// One Adan step (see Adan).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param prev_grads Unlike pylocron: read as the previous step's (decayed) gradient and overwritten with
///   this step's; on a parameter's first step (`steps[i] == 1`) the difference term is zero.
/// \param exp_avgs Moving averages of the gradient, one per parameter, updated in place.
/// \param exp_avg_sqs Moving averages of the gradient difference (the reference's key), one per
///   parameter, updated in place.
/// \param exp_avg_deltas Moving averages of the squared Nesterov direction, one per parameter,
///   updated in place.
/// \param max_exp_avg_deltas Their running maxima; read only with `hyper.amsgrad` (may be empty
///   otherwise).
/// \param steps Each parameter's step counter after this step's increment (1 on its first
///   update).
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \param sharding Shards' layout, for the cautious mask's count over the whole tensor (`caution`); see
///   Sharding.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
void adan_(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
           TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
           c10::ArrayRef<int64_t> steps, const AdanHyper& hyper, const GradScaling& scaling = {},
           const Sharding& sharding = {});

/// Hyper-parameters of ademamix_(); fields as in AdEMAMixOptions.
struct AdEMAMixHyper {
  HOLOCRON_FIELDS;
  /// Learning rate (>= 0).
  HOLOCRON_HYPER(double, lr);
  /// Coefficient of the fast moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta1);
  /// Coefficient of the moving average of the squared gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta2);
  /// Coefficient of the slow moving average of the gradient, in [0, 1).
  HOLOCRON_HYPER(double, beta3);
  /// Weight of the slow average in the update (finite).
  HOLOCRON_HYPER(double, alpha);
  /// Added to the denominator (>= 0).
  HOLOCRON_HYPER(double, eps);
  /// L2 penalty added to the gradient as `weight_decay * p` (>= 0; pylocron accepts a negative one).
  HOLOCRON_HYPER(double, weight_decay);
  /// Steps over which `alpha` warms up linearly from 0 (the paper's `T_alpha`; > 0), or none.
  HOLOCRON_HYPER(std::optional<double>, t_alpha) = std::nullopt;
  /// Steps over which `beta3` warms up from `beta1` (the paper's `T_beta3`; > 0, and then
  /// `beta1 > 0`, `beta3 > 0`), or none.
  HOLOCRON_HYPER(std::optional<double>, t_beta3) = std::nullopt;
  /// `p *= 1 - lr * weight_decay` before the update instead of `weight_decay * p` in the gradient.
  HOLOCRON_HYPER(bool, decoupled_weight_decay) = false;
  /// Cautious Optimizers (pytorch-optimizer's `cautious`): the fast average's term only where
  /// `m1 * g > 0`, times `numel / (kept + 1)`.
  HOLOCRON_HYPER(bool, caution) = false;
};

/// One AdEMAMix step (see AdEMAMix).
/// \param params Parameters of one group, updated in place.
/// \param grads Their gradients, dense, each with its parameter's shape, dtype and device.
/// \param exp_avgs Fast moving averages of the gradient, one per parameter, updated in place.
/// \param exp_avgs_slow Slow moving averages of the gradient, one per parameter, updated in place.
/// \param exp_avg_sqs Moving averages of the squared gradient, one per parameter, updated in place.
/// \param steps Each parameter's step counter after this step's increment (1 on its first
///   update).
/// \param hyper Hyper-parameters, checked first (see check()).
/// \param scaling Loss scaling from a GradScaler, if any: see GradScaling.
/// \param sharding Shards' layout, for the cautious mask's count over the whole tensor (`caution`); see
///   Sharding.
/// \throws c10::Error (nothing written) if a list's length or a tensor does not fit its
///   parameter; c10::ValueError if a hyper-parameter is invalid.
void ademamix_(TensorList params, TensorList grads, TensorList exp_avgs,
               TensorList exp_avgs_slow, TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const AdEMAMixHyper& hyper, const GradScaling& scaling = {}, const Sharding& sharding = {});

/// Lookahead / Scout synchronisation, for every tensor: `slow += sync_rate * (fast - slow)`,
/// then `fast = slow`.
/// \param fast The parameters (fast weights), overwritten.
/// \param slow Their slow copies, one per parameter, same shape, dtype and device; updated.
/// \param sync_rate In [0, 1] (c10::ValueError otherwise).
/// \param compensation Kahan compensations of the fast weights (the base's `kahan_summation`), as
///   GradScaling::compensation: a compensated weight is read as `p + c`, and left as the slow
///   weight rounded and what that dropped, so that `p + c` equals the slow weight.
void lookahead_sync_(TensorList fast, TensorList slow, double sync_rate, TensorList compensation = {});

/// Scout's running statistics, per element, of the per-step changes `u = fast - prev` over the
/// current period (unlike pylocron: memory does not grow with the period). Each list holds one tensor per
/// parameter, of its shape and device; `prev` has its dtype, the others may be wider (float for
/// half and bfloat16 parameters).
struct ScoutStats {
  /// The parameters as they were after the previous step (or sync).
  TensorList prev;
  /// Mean of the changes (Welford).
  TensorList mean;
  /// Sum of squared deviations of the changes from their mean (Welford's M2).
  TensorList m2;
  /// Largest change.
  TensorList max;
  /// Smallest change.
  TensorList min;
};
/// Folds this step's change `u = fast - prev` into `stats`, then sets `prev = fast`.
/// \param fast The parameters after the base optimizer's step.
/// \param stats The statistics, updated in place.
/// \param count Number of changes already folded in this period (0 restarts the statistics
///   from this change); must be >= 0.
void scout_accumulate_(TensorList fast, const ScoutStats& stats, int64_t count);

/// Scout's coherence: the mean over parameters of the mean over elements of
/// `std(u) / max|u - mean(u)|` (std unbiased over the `count` changes). Unlike pylocron: elements where that
/// ratio is not a number are left out, a parameter with none left does not count, and with
/// nothing left at all the coherence is 0.
/// \param stats The statistics scout_accumulate_() gathered (not modified).
/// \param count Number of changes they hold; must be >= 1.
/// \param sharding Set when the tensors are shards of larger ones: see Sharding.
/// \return The coherence; Scout syncs at rate `max(1 - coherence, sync_rate)`.
double scout_coherence(const ScoutStats& stats, int64_t count, const Sharding& sharding = {});

}  // namespace holocron::optim::functional

namespace holocron::optim::functional {

/// The instruction-set build the fused CPU kernels use: "avx512", "avx2", "default" (portable)
/// or "reference" (ATen ops only).
///
/// Which implementation runs the updates of CPU tensors: the functional entry points use fused,
/// vectorized, multithreaded kernels for CPU tensors of float, double, bfloat16 or half whose
/// state is dense with the parameter's strides, and the reference backend (ATen ops: any device,
/// any strides) otherwise. The fused kernels are built for several instruction sets and the best
/// one this CPU runs is chosen at load time; the environment variable
/// `HOLOCRON_OPTIM_CPU_CAPABILITY` (auto, avx512, avx2, default, reference) caps it for a process,
/// as `ATEN_CPU_CAPABILITY` does for ATen. Every build gives bitwise the same results, for any
/// thread count.
std::string cpu_capability();
/// Chooses the build, process-wide: meant for tests and benchmarks.
/// \param name One of available_cpu_capabilities(), or "auto" (the best this CPU runs).
/// \throws c10::ValueError for a name this CPU cannot run.
void set_cpu_capability(const std::string& name);
/// "reference" and the builds this CPU runs.
std::vector<std::string> available_cpu_capabilities();

// Hyper-parameter checks (c10::ValueError naming the argument and its value).
/// The squared norm of each unscaled gradient, for global gradient-norm clipping: the square root
/// of their sum over every group clipped together is GradScaling's `grad_norm`. Sums are taken in
/// float64 in a fixed order, so the same gradients give the same bits.
/// \param grads Gradients, dense, floating point.
/// \param scaling Loss scaling from a GradScaler, if any: the gradients are read unscaled; a
///   `found_inf` that says to skip returns zeros. Its clipping fields are not read.
/// \param sharding Set when the gradients are shards of larger tensors (their numels then
///   give the whole tensors' sizes): the sums are all-reduced over the shards.
/// \return One value per gradient, the sum over all shards of its squares.
std::vector<double> grad_squared_norms(TensorList grads, const GradScaling& scaling = {},
                                       const Sharding& sharding = {});

// Every update function runs its check first, also on empty lists, so the
// fronts validate options by calling the update with no tensors.
/// Checks LARS hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const LarsHyper& hyper);
/// Checks LAMB hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const LambHyper& hyper);
/// Checks RaLars hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const RaLarsHyper& hyper);
/// Checks TAdam hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const TAdamHyper& hyper);
/// Checks AdaBelief hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const AdaBeliefHyper& hyper);
/// Checks AdamP hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const AdamPHyper& hyper);
/// Checks Adan hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const AdanHyper& hyper);
/// Checks AdEMAMix hyper-parameters. \throws c10::ValueError naming the first invalid one.
void check(const AdEMAMixHyper& hyper);

}  // namespace holocron::optim::functional
