// AdEMAMix: a fast and a slow momentum over one second moment, one pass.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays: p, g, exp_avg, exp_avg_slow, exp_avg_sq.
// hyper: beta1, beta2, beta3, alpha, eps, weight_decay.
// per tensor: 1/bc1, 1/sqrt(bc2), -lr.
template <typename T>
struct AdEMAMixApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 5, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = 0b11111, kWrite = 0b11101;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    V beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, alpha, eps,
        weight_decay, inv_bc1, inv_sqrt_bc2, step;
    bool decay;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[0];
      const V g = with_weight_decay(x[1], p, weight_decay, decay);
      V& fast = x[2];
      V& slow = x[3];
      V& nu = x[4];
      fast = fast * beta1 + one_minus_beta1 * g;
      nu = nu * beta2 + one_minus_beta2 * g * g;
      slow = slow * beta3 + one_minus_beta3 * g;
      const V denom = adam_denominator<V>(nu, nullptr, inv_sqrt_bc2, eps);
      p = p + step * ((fast * inv_bc1 + alpha * slow) / denom);
    }
  };
  Body for_tensor(int64_t t) const {
    const auto& h = args.hyper;
    const auto& c = args.per_tensor[t];
    return {splat<V>(h[0]), splat<V>(1.0 - h[0]), splat<V>(h[1]), splat<V>(1.0 - h[1]),
            splat<V>(h[2]), splat<V>(1.0 - h[2]), splat<V>(h[3]), splat<V>(h[4]),
            splat<V>(h[5]), splat<V>(c[0]), splat<V>(c[1]), splat<V>(c[2]),
            h[5] != 0.0};
  }
};

}  // namespace

void register_ademamix(PassTable& table) {
  register_pass<AdEMAMixApply>(table, Pass::AdEMAMixApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
