// AdaBelief: one pass; the second moment tracks the gradient's deviation from
// its (already updated) mean.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays: p, g, exp_avg, exp_avg_sq, max_exp_avg_sq (absent without amsgrad).
// hyper: beta1, beta2, eps, weight_decay, amsgrad. per tensor: 1/sqrt(bc2), -lr/bc1.
template <typename T>
struct AdaBeliefApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 5, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = 0b11111, kWrite = 0b11101;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    V beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, inv_sqrt_bc2, step;
    bool decay, amsgrad;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[0];
      const V g = with_weight_decay(x[1], p, weight_decay, decay);
      V& m = x[2];
      V& s = x[3];
      m = m * beta1 + one_minus_beta1 * g;
      const V residual = g - m;
      s = s * beta2 + one_minus_beta2 * residual * residual;
      p = p + step * (m / adam_denominator(s, amsgrad ? &x[4] : nullptr, inv_sqrt_bc2, eps));
    }
  };
  Body for_tensor(int64_t t) const {
    const auto& h = args.hyper;
    const auto& c = args.per_tensor[t];
    return {splat<V>(h[0]), splat<V>(1.0 - h[0]), splat<V>(h[1]), splat<V>(1.0 - h[1]),
            splat<V>(h[2]), splat<V>(h[3]),       splat<V>(c[0]), splat<V>(c[1]),
            h[3] != 0.0,    h[4] != 0.0};
  }
};

}  // namespace

void register_adabelief(PassTable& table) {
  register_pass<AdaBeliefApply>(table, Pass::AdaBeliefApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
