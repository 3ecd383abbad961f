#pragma once

// What each fused pass takes from the functional layer, by name: its
// constants, its per-tensor coefficients (computed on the host in double) and
// its arrays. Included by both sides: the host fills these structs with
// designated initializers (a field out of order does not compile, a missing
// one is an error under -Wextra -Werror), the passes read the same fields.
//
//   Constants          the algorithm's hyper-parameters for the whole group
//   PerTensor          one row per tensor
//   Arrays<T>          one T per array the pass walks, in the order the pass
//                      sees them: the host builds it with T = TensorList, the
//                      pass reads slot numbers from Arrays<int> (slots<>()).
//                      Arrays of the parameter's dtype come first, then those
//                      of its math type (Scout's statistics).
//
// An array left empty by the host (amsgrad off, no momentum, no weight decay)
// is neither read nor written. Passes of one algorithm share what they can.

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace holocron::optim::kernels::cpu::protocol {

// Arrays<int> whose fields hold their own positions 0, 1, 2, ...: every
// field of an Arrays struct has the same type, so an Arrays<char> has no
// padding and its size is the field count.
template <template <typename> class Arrays, int... I>
constexpr Arrays<int> slots_impl(std::integer_sequence<int, I...>) {
  return Arrays<int>{I...};
}
template <template <typename> class Arrays>
constexpr int array_count() {
  return static_cast<int>(sizeof(Arrays<char>));
}
template <template <typename> class Arrays>
constexpr Arrays<int> slots() {
  return slots_impl<Arrays>(std::make_integer_sequence<int, array_count<Arrays>()>{});
}
// A read or write set: bit s set for each slot s given.
template <typename... S>
constexpr unsigned slot_set(S... s) {
  return ((1u << s) | ... | 0u);
}
// Whether an Arrays struct names a `param` and a `grad` (an algorithm's; its other arrays are
// then state).
template <template <typename> class Arrays, typename = void>
struct HasParamAndGrad : std::false_type {};
template <template <typename> class Arrays>
struct HasParamAndGrad<Arrays, std::void_t<decltype(Arrays<int>{}.param), decltype(Arrays<int>{}.grad)>>
    : std::true_type {};
template <template <typename> class Arrays>
constexpr bool has_param_and_grad() {
  return HasParamAndGrad<Arrays>::value;
}

// The host's Arrays<L> as the list the driver takes, in slot order.
template <template <typename> class Arrays, typename L>
std::array<L, array_count<Arrays>()> in_slot_order(const Arrays<L>& arrays) {
  // Same-typed fields of a standard-layout aggregate lie in declaration order, without padding.
  static_assert(std::is_trivially_copyable_v<L> && std::is_standard_layout_v<Arrays<L>>);
  static_assert(sizeof(Arrays<L>) == array_count<Arrays>() * sizeof(L), "an Arrays struct holds only its lists");
  std::array<L, array_count<Arrays>()> out;
  std::memcpy(static_cast<void*>(out.data()), &arrays, sizeof(arrays));
  return out;
}

// ---- Global gradient norm ------------------------------------------------------
// One pass sums ||g||^2 of each unscaled gradient (max_grad_norm's clipping).
namespace grad_norm {
template <typename T>
struct Arrays {
  T grad;
};
}  // namespace grad_norm

// ---- Cautious updates -------------------------------------------------------
// One pass counts, per tensor, the elements where this step's first moment
// m' = beta1 * m + grad_weight * g' (g' = g + wd * p; p is read only when wd != 0)
// agrees in sign with g' (m' * g' > 0): Cautious Optimizers' mask, whose mean
// rescales it. Nothing is written; the apply pass recomputes the mask.
namespace caution {
template <typename T>
struct Arrays {
  T grad, exp_avg, param;
};
struct Constants {
  double beta1, grad_weight, weight_decay;
};
}  // namespace caution

// ---- LARS ------------------------------------------------------------------
namespace lars {
// Pass 1 (norms) sums ||p||^2 and ||g||^2. Pass 2: d = (g + wd * p) * scale;
// with momentum buf = d (new) or momentum * buf + (1 - dampening) * d, then
// d + momentum * buf (Nesterov) or buf; p += step * that.
template <typename T>
struct Arrays {
  T param, grad, momentum_buffer;
};
struct Constants {
  double weight_decay, momentum, dampening;
  bool nesterov;
  double decay;  // pass 2: p *= decay first (decoupled weight decay: 1 - lr * wd), unless 1
};
struct PerTensor {
  double direction_scale;  // 1, or the trust ratio where it scales d before the momentum
  double step;             // -lr * trust ratio, or -lr
  bool buffer_is_new;
};
}  // namespace lars

// ---- LAMB and RaLars -------------------------------------------------------
// Pass 1 (moments) sums ||p||^2 and ||u||^2 of the direction u; pass 2 applies
// p += step * u. Both walk the same arrays.
namespace lamb {
template <typename T>
struct Arrays {
  T param, grad, exp_avg, exp_avg_sq;
};
struct Constants {
  double beta1, beta2, eps, weight_decay;
  double grad_weight;  // m = beta1 * m + grad_weight * g: 1 - beta1, or 1 (LAMB without grad averaging)
  double decay;        // pass 2: p *= decay first (decoupled weight decay: 1 - lr * wd), unless 1
};
// LAMB's direction (m * inv_bc1) / (sqrt(v) * inv_sqrt_bc2 + eps) + wd * p:
// without bias correction both factors are 1, which leaves the reference's bits.
struct PerTensor {
  double inv_bc1, inv_sqrt_bc2;
  double step;           // -lr * trust ratio, pass 2
  double caution_scale;  // the cautious passes: d's kept elements times 1 / max(mean(mask), 1e-3)
};
}  // namespace lamb

namespace ralars {
using lamb::Arrays;
using lamb::Constants;
// How the direction is formed this step.
enum class Mode : int {
  kRectified = 0,  // r * (m / bc1) / (sqrt(v / bc2) + eps)
  kAdaptive = 1,   // (m / bc1) / (sqrt(v / bc2) + eps): force_adaptive_momentum before rectification
  kMomentum = 2,   // m / bc1
};
struct PerTensor {
  double inv_bc1, inv_bc2, rectification;
  Mode mode;
  double step;  // -lr * trust ratio, pass 2
};
}  // namespace ralars

// ---- What Adam's relatives share ------------------------------------------
// The arrays of an Adam-style update (the running max only with amsgrad) and
// its constants.
namespace adam_like {
template <typename T>
struct Arrays {
  T param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;
};
}  // namespace adam_like

// ---- TAdam -----------------------------------------------------------------
namespace tadam {
// Pass 1 sums sum((g' - m)^2 / (v + eps)), g' = g + wd * p (p is read only
// when wd != 0, so the host leaves it empty otherwise).
template <typename T>
struct DistanceArrays {
  T grad, exp_avg, exp_avg_sq, param;
};
struct DistanceConstants {
  double eps, weight_decay;
};
template <typename T>
using ApplyArrays = adam_like::Arrays<T>;
struct ApplyConstants {
  double beta2, eps, weight_decay;
  bool amsgrad;
  double decay;  // p *= decay before the update (decoupled weight decay: 1 - lr * wd), unless 1
};
struct ApplyPerTensor {
  double keep, take;  // m = keep * m + take * g': W / (W + w), w / (W + w)
  double inv_sqrt_bc2;
  double step;  // -lr / bc1
};
}  // namespace tadam

// ---- AdaBelief -------------------------------------------------------------
namespace adabelief {
using adam_like::Arrays;
struct Constants {
  double beta1, beta2, eps, weight_decay;
  bool amsgrad;
  double decay;           // p *= decay before the update (decoupled weight decay), unless 1
  double variance_eps;    // s += variance_eps after its update, unless 0
};
// What moves the parameter, per tensor (with `rectify`, by its step count).
enum class Direction : int32_t {
  Adaptive,           // m / (sqrt(s or max s) * inv_sqrt_bc2 + eps)
  RectifiedAdaptive,  // m / (sqrt(s) + eps): s, not its maximum, as timm
  Momentum,           // m
  None,               // nothing (the decay and the moments still update)
};
struct PerTensor {
  double inv_sqrt_bc2;
  double step;  // p += step * direction
  Direction direction;
};
}  // namespace adabelief

// ---- AdamP -----------------------------------------------------------------
// Pass 1 updates the moments and sums p.g', ||p||^2, ||g'||^2, p.q; pass 2
// applies q, less projection * p where the host decided to project.
namespace adamp {
using adam_like::Arrays;
struct Constants {
  double beta1, beta2, eps, weight_decay;
  bool amsgrad;
  bool nesterov;  // q from beta1 * m + (1 - beta1) * g instead of m
  bool caution;   // m only where m * g > 0, times caution_scale (before Nesterov's mix)
};
// One row per tensor, or per output channel of a tensor (timm's channel-wise projection).
struct PerTensor {
  double inv_bc1, inv_sqrt_bc2;
  double step;           // -lr, pass 2
  double projection;     // c in q - c * p, p before its decay (0: no projection), pass 2
  double decay;          // p = decay * p + step * q (decoupled weight decay), pass 2
  double caution_scale;  // the whole tensor's
};
}  // namespace adamp

// ---- Adan ------------------------------------------------------------------
namespace adan {
template <typename T>
struct Arrays {
  T param, grad, prev_grad, exp_avg, exp_avg_sq, exp_avg_delta, max_exp_avg_delta;
};
struct Constants {
  double beta1, beta2, beta3, eps;
  double weight_decay;  // of g + wd * p: 0 when decoupled
  bool amsgrad;
  bool caution;  // m's term only where m * g > 0, times caution_scale
};
struct PerTensor {
  bool first_step;  // the gradient difference is zero
  double inv_bc1, beta2_over_bc2, inv_sqrt_bc3;
  double step;           // -lr
  double decay_factor;   // p *= it before the update (no_prox: 1 - wd * lr), unless 1
  double decay_divisor;  // p /= it after the update (1 + wd * lr), unless 1
  double caution_scale;  // with caution: 1 / max(mean(m * g > 0), 1e-3)
};
}  // namespace adan

// ---- AdEMAMix --------------------------------------------------------------
namespace ademamix {
template <typename T>
struct Arrays {
  T param, grad, exp_avg, exp_avg_slow, exp_avg_sq;
};
struct Constants {
  double beta1, beta2, eps, weight_decay;
  double decay;  // p *= decay before the update (decoupled weight decay: 1 - lr * wd), unless 1
  bool caution;  // the fast average's term only where m1 * g > 0, times caution_scale
};
struct PerTensor {
  double beta3, alpha;  // at this tensor's step (the warm-ups)
  double inv_bc1, inv_sqrt_bc2;
  double step;           // -lr
  double caution_scale;  // with caution: numel / (kept + 1)
};
}  // namespace ademamix

// ---- Lookahead and Scout ---------------------------------------------------
namespace lookahead {
// slow is state: stored as the base's state dtype (its group's state_precision).
template <typename T>
struct Arrays {
  T fast, slow;
};
struct Constants {
  double sync_rate;
};
}  // namespace lookahead

namespace scout {
// fast and prev have the parameter's dtype; the statistics are state, in the base's state dtype
// (its math type for bfloat16 and half parameters when that is theirs).
template <typename T>
struct Arrays {
  T fast, prev, mean, m2, max, min;
};
struct AccumulateConstants {
  int64_t count;  // changes folded in before this one
};
struct CoherenceConstants {
  int64_t count;  // changes in the period
};
}  // namespace scout

// The arrays a pass keeps as state, stored in the state dtype: an algorithm's all but its
// parameter and gradient; the wrappers' as stated above.
template <template <typename> class Arrays>
struct StateArrays {
  static constexpr unsigned value = [] {
    if constexpr (has_param_and_grad<Arrays>()) {
      constexpr auto s = slots<Arrays>();
      return ((1u << array_count<Arrays>()) - 1u) & ~(1u << s.param) & ~(1u << s.grad);
    } else {
      return 0u;
    }
  }();
};
template <>
struct StateArrays<lookahead::Arrays> {
  static constexpr unsigned value = slot_set(slots<lookahead::Arrays>().slow);
};
template <>
struct StateArrays<scout::Arrays> {
  static constexpr auto kSlot = slots<scout::Arrays>();
  static constexpr unsigned value = slot_set(kSlot.mean, kSlot.m2, kSlot.max, kSlot.min);
};

}  // namespace holocron::optim::kernels::cpu::protocol

namespace holocron::optim::kernels::cpu {

// The passes, each named after its algorithm and phase: what the functional
// layer runs (cpu::run) and each kernel file registers (src/kernels/cpu/table.cpp).
enum class Pass : int {
  GradNorms,
  CautionCount,
  LarsNorms,
  LarsApply,
  LambMoments,
  LambApply,
  LambCautiousMoments,
  LambCautiousApply,
  RaLarsMoments,
  RaLarsApply,
  TAdamDistance,
  TAdamApply,
  AdaBeliefApply,
  AdaBeliefRectifiedApply,
  AdamPMoments,
  AdamPApply,
  AdamPApplyReadingGrad,
  AdanApply,
  AdEMAMixApply,
  LookaheadSync,
  ScoutAccumulate,
  ScoutCoherence,
  Count
};

}  // namespace holocron::optim::kernels::cpu
