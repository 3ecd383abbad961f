// Adan: three moments and the previous gradient, one pass.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays: p, g, prev_grad, exp_avg, exp_avg_sq, exp_avg_delta,
// max_exp_avg_delta (absent without amsgrad).
// hyper: beta1, beta2, beta3, eps, weight_decay, amsgrad.
// per tensor: first step (1: the difference is zero), 1/bc1, beta2/bc2,
// 1/sqrt(bc3), -lr, 1 + wd*lr.
template <typename T>
struct AdanApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 7, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = 0b1111111, kWrite = 0b1111101;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    V beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, eps, weight_decay;
    V inv_bc1, beta2_over_bc2, inv_sqrt_bc3, step, decay_divisor;
    bool decay, amsgrad, first_step;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[0];
      const V g = with_weight_decay(x[1], p, weight_decay, decay);
      V& prev = x[2];
      V& m = x[3];
      V& v = x[4];
      V& n = x[5];
      // Fix 1: the difference is taken against the previous step's gradient.
      const V diff = first_step ? V(0) : g - prev;
      m = m * beta1 + one_minus_beta1 * g;
      v = v * beta2 + one_minus_beta2 * diff;
      const V corrected = g + beta2 * diff;
      n = n * beta3 + one_minus_beta3 * corrected * corrected;
      prev = g;
      const V denom = adam_denominator(n, amsgrad ? &x[6] : nullptr, inv_sqrt_bc3, eps);
      p = p + step * ((m * inv_bc1 + beta2_over_bc2 * v) / denom);
      if (decay) p = p / decay_divisor;
    }
  };
  Body for_tensor(int64_t t) const {
    const auto& h = args.hyper;
    const auto& c = args.per_tensor[t];
    return {splat<V>(h[0]), splat<V>(1.0 - h[0]), splat<V>(h[1]), splat<V>(1.0 - h[1]),
            splat<V>(h[2]), splat<V>(1.0 - h[2]), splat<V>(h[3]), splat<V>(h[4]),
            splat<V>(c[1]), splat<V>(c[2]), splat<V>(c[3]), splat<V>(c[4]),
            splat<V>(c[5]), h[4] != 0.0,          h[5] != 0.0,    c[0] != 0.0};
  }
};

}  // namespace

void register_adan(PassTable& table) { register_pass<AdanApply>(table, Pass::AdanApply); }

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
