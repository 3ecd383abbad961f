// TAdam: the Student-t weight of this gradient needs the whole tensor's
// Mahalanobis distance under the moments before this step (pass 1); pass 2
// is the weighted Adam update.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::tadam;

// Sum: sum((g + wd*p - m)^2 / (v + eps)).
template <typename T, typename S>
struct TAdamDistance {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::DistanceArrays>();
  static constexpr int kNarrow = protocol::array_count<proto::DistanceArrays>(), kWide = 0, kSums = 1;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = protocol::slot_set(kSlot.grad, kSlot.exp_avg, kSlot.exp_avg_sq, kSlot.param);
  static constexpr unsigned kWrite = 0;
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    V eps, weight_decay;
    bool decay;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V g = with_weight_decay(x[kSlot.grad], x[kSlot.param], weight_decay, decay);
      const V residual = g - x[kSlot.exp_avg];
      acc.add(0, residual * residual / (x[kSlot.exp_avg_sq] + eps));
    }
  };
  Body for_tensor(int64_t) const {
    const auto h = args.constants.get<proto::DistanceConstants>();
    return {splat<V>(h.eps), splat<V>(h.weight_decay), h.weight_decay != 0.0};
  }
};

template <typename T, typename S>
struct TAdamApply {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::ApplyArrays>();
  static constexpr int kNarrow = protocol::array_count<proto::ApplyArrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead =
      protocol::slot_set(kSlot.param, kSlot.grad, kSlot.exp_avg, kSlot.exp_avg_sq, kSlot.max_exp_avg_sq);
  static constexpr unsigned kWrite =
      protocol::slot_set(kSlot.param, kSlot.exp_avg, kSlot.exp_avg_sq, kSlot.max_exp_avg_sq);
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    V beta2, one_minus_beta2, eps, weight_decay, keep, take, inv_sqrt_bc2, step, decay_factor;
    bool decay, amsgrad, decays;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      const V g = with_weight_decay(x[kSlot.grad], p, weight_decay, decay);
      V& m = x[kSlot.exp_avg];
      V& v = x[kSlot.exp_avg_sq];
      m = m * keep + take * g;
      v = v * beta2 + one_minus_beta2 * g * g;
      // A branch, not a factor of 1: the compiler may fuse either product into the add.
      if (decays) p = p * decay_factor;
      p = p + step * (m / adam_denominator(v, amsgrad ? &x[kSlot.max_exp_avg_sq] : nullptr, inv_sqrt_bc2, eps));
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::ApplyConstants>();
    const auto c = args.per_tensor[t].get<proto::ApplyPerTensor>();
    return {splat<V>(h.beta2), splat<V>(1.0 - h.beta2), splat<V>(h.eps),          splat<V>(h.weight_decay),
            splat<V>(c.keep),  splat<V>(c.take),         splat<V>(c.inv_sqrt_bc2), splat<V>(c.step),
            splat<V>(h.decay), h.weight_decay != 0.0,    h.amsgrad,                h.decay != 1.0};
  }
};

}  // namespace

void register_tadam(PassTable& table) {
  register_pair<TAdamDistance, TAdamApply>(table, Pass::TAdamDistance, Pass::TAdamApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
