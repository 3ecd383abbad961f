// Adan: three moments and the previous gradient, one pass.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::adan;

template <typename T, typename S>
struct AdanApply {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::Arrays>();
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = protocol::slot_set(kSlot.param, kSlot.grad, kSlot.prev_grad, kSlot.exp_avg,
                                                       kSlot.exp_avg_sq, kSlot.exp_avg_delta, kSlot.max_exp_avg_delta);
  static constexpr unsigned kWrite = kRead & ~(1u << kSlot.grad);
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    V beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, eps, weight_decay;
    V inv_bc1, beta2_over_bc2, inv_sqrt_bc3, step, decay_factor, decay_divisor, caution_scale;
    bool l2, amsgrad, first_step, multiplies, divides, caution;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      const V g = with_weight_decay(x[kSlot.grad], p, weight_decay, l2);
      V& prev = x[kSlot.prev_grad];
      V& m = x[kSlot.exp_avg];
      V& v = x[kSlot.exp_avg_sq];
      V& n = x[kSlot.exp_avg_delta];
      // Against the previous step's g' (zero on the first step), as the paper
      // does; the reference never updates prev_grad.
      const V diff = first_step ? V(0) : g - prev;
      m = m * beta1 + one_minus_beta1 * g;
      v = v * beta2 + one_minus_beta2 * diff;
      const V corrected = g + beta2 * diff;
      n = n * beta3 + one_minus_beta3 * corrected * corrected;
      prev = g;
      const V denom = adam_denominator(n, amsgrad ? &x[kSlot.max_exp_avg_delta] : nullptr, inv_sqrt_bc3, eps);
      // Branches, not factors of 1: the compiler may fuse a product into the add.
      if (multiplies) p = p * decay_factor;
      V momentum = m * inv_bc1;
      // Cautious: the momentum only where it agrees in sign with the gradient.
      if (caution) momentum = V::blendv(V(0), momentum * caution_scale, m * g > V(0));
      p = p + step * ((momentum + beta2_over_bc2 * v) / denom);
      if (divides) p = p / decay_divisor;
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    const auto c = args.per_tensor[t].get<proto::PerTensor>();
    return {splat<V>(h.beta1),   splat<V>(1.0 - h.beta1),   splat<V>(h.beta2),          splat<V>(1.0 - h.beta2),
            splat<V>(h.beta3),   splat<V>(1.0 - h.beta3),   splat<V>(h.eps),            splat<V>(h.weight_decay),
            splat<V>(c.inv_bc1), splat<V>(c.beta2_over_bc2), splat<V>(c.inv_sqrt_bc3), splat<V>(c.step),
            splat<V>(c.decay_factor), splat<V>(c.decay_divisor), splat<V>(c.caution_scale),
            h.weight_decay != 0.0,    h.amsgrad,                c.first_step,
            c.decay_factor != 1.0,    c.decay_divisor != 1.0,   h.caution};
  }
};

}  // namespace

void register_adan(PassTable& table) { register_pass<AdanApply>(table, Pass::AdanApply); }

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
