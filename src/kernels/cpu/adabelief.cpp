// AdaBelief: one pass; the second moment tracks the gradient's deviation from
// its (already updated) mean. With timm's rectification the host picks each
// tensor's direction from its step count.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::adabelief;

// kRectify: the direction is chosen per tensor (timm's rectification); without, the adaptive one
// only, with no branch in the loop.
template <typename T, typename S, bool kRectify>
struct AdaBeliefApplyPass {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::Arrays>();
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead =
      protocol::slot_set(kSlot.param, kSlot.grad, kSlot.exp_avg, kSlot.exp_avg_sq, kSlot.max_exp_avg_sq);
  static constexpr unsigned kWrite =
      protocol::slot_set(kSlot.param, kSlot.exp_avg, kSlot.exp_avg_sq, kSlot.max_exp_avg_sq);
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    V beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, inv_sqrt_bc2, step, decay_factor,
        variance_eps;
    bool decay, amsgrad, decays, adds_variance_eps;
    proto::Direction direction;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      const V g = with_weight_decay(x[kSlot.grad], p, weight_decay, decay);
      V& m = x[kSlot.exp_avg];
      V& s = x[kSlot.exp_avg_sq];
      m = m * beta1 + one_minus_beta1 * g;
      const V residual = g - m;
      s = s * beta2 + one_minus_beta2 * residual * residual;
      if (adds_variance_eps) s = s + variance_eps;
      // A branch, not a factor of 1: the compiler may fuse either product into the add.
      if (decays) p = p * decay_factor;
      V* max_s = amsgrad ? &x[kSlot.max_exp_avg_sq] : nullptr;
      if constexpr (!kRectify) {
        p = p + step * (m / adam_denominator(s, max_s, inv_sqrt_bc2, eps));
        return;
      }
      switch (direction) {
        case proto::Direction::Adaptive:
          p = p + step * (m / adam_denominator(s, max_s, inv_sqrt_bc2, eps));
          return;
        case proto::Direction::RectifiedAdaptive:
          if (max_s != nullptr) *max_s = at::vec::maximum(*max_s, s);
          p = p + step * (m / (s.sqrt() + eps));
          return;
        case proto::Direction::Momentum:
          if (max_s != nullptr) *max_s = at::vec::maximum(*max_s, s);
          p = p + step * m;
          return;
        case proto::Direction::None:
          if (max_s != nullptr) *max_s = at::vec::maximum(*max_s, s);
          return;
      }
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    const auto c = args.per_tensor[t].get<proto::PerTensor>();
    return {splat<V>(h.beta1),        splat<V>(1.0 - h.beta1), splat<V>(h.beta2),        splat<V>(1.0 - h.beta2),
            splat<V>(h.eps),          splat<V>(h.weight_decay), splat<V>(c.inv_sqrt_bc2), splat<V>(c.step),
            splat<V>(h.decay),        splat<V>(h.variance_eps), h.weight_decay != 0.0,    h.amsgrad,
            h.decay != 1.0,           h.variance_eps != 0.0,   c.direction};
  }
};

template <typename T, typename S>
using AdaBeliefApply = AdaBeliefApplyPass<T, S, false>;
template <typename T, typename S>
using AdaBeliefRectifiedApply = AdaBeliefApplyPass<T, S, true>;

}  // namespace

void register_adabelief(PassTable& table) {
  register_pass<AdaBeliefApply>(table, Pass::AdaBeliefApply);
  register_pass<AdaBeliefRectifiedApply>(table, Pass::AdaBeliefRectifiedApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
