// AdEMAMix: a fast and a slow momentum over one second moment, one pass.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::ademamix;

template <typename T, typename S>
struct AdEMAMixApply {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::Arrays>();
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead =
      protocol::slot_set(kSlot.param, kSlot.grad, kSlot.exp_avg, kSlot.exp_avg_slow, kSlot.exp_avg_sq);
  static constexpr unsigned kWrite = kRead & ~(1u << kSlot.grad);
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    V beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, alpha, eps,
        weight_decay, inv_bc1, inv_sqrt_bc2, step, decay_factor, caution_scale;
    bool decay, decays, caution;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      const V g = with_weight_decay(x[kSlot.grad], p, weight_decay, decay);
      V& fast = x[kSlot.exp_avg];
      V& slow = x[kSlot.exp_avg_slow];
      V& nu = x[kSlot.exp_avg_sq];
      fast = fast * beta1 + one_minus_beta1 * g;
      nu = nu * beta2 + one_minus_beta2 * g * g;
      slow = slow * beta3 + one_minus_beta3 * g;
      const V denom = adam_denominator<V>(nu, nullptr, inv_sqrt_bc2, eps);
      // A branch, not a factor of 1: the compiler may fuse either product into the add.
      if (decays) p = p * decay_factor;
      V fast_term = fast * inv_bc1;
      // Cautious: the fast average only where it agrees in sign with the gradient.
      if (caution) fast_term = V::blendv(V(0), fast_term * caution_scale, fast * g > V(0));
      p = p + step * ((fast_term + alpha * slow) / denom);
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    const auto c = args.per_tensor[t].get<proto::PerTensor>();
    return {splat<V>(h.beta1),   splat<V>(1.0 - h.beta1),  splat<V>(h.beta2), splat<V>(1.0 - h.beta2),
            splat<V>(c.beta3),   splat<V>(1.0 - c.beta3),  splat<V>(c.alpha), splat<V>(h.eps),
            splat<V>(h.weight_decay), splat<V>(c.inv_bc1), splat<V>(c.inv_sqrt_bc2), splat<V>(c.step),
            splat<V>(h.decay), splat<V>(c.caution_scale), h.weight_decay != 0.0, h.decay != 1.0, h.caution};
  }
};

}  // namespace

void register_ademamix(PassTable& table) {
  register_pass<AdEMAMixApply>(table, Pass::AdEMAMixApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
