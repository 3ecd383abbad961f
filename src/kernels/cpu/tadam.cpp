// TAdam: the Student-t weight of this gradient needs the whole tensor's
// Mahalanobis distance under the moments before this step (pass 1); pass 2
// is the weighted Adam update.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays: g, exp_avg, exp_avg_sq, p (absent without weight decay).
// hyper: eps, weight_decay. Sum: sum((g + wd*p - m)^2 / (v + eps)).
template <typename T>
struct TAdamDistance {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 4, kWide = 0, kSums = 1;
  static constexpr unsigned kRead = 0b1111, kWrite = 0;
  static constexpr int kGrad = 0;
  const PassArgs& args;

  struct Body {
    V eps, weight_decay;
    bool decay;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V g = with_weight_decay(x[0], x[3], weight_decay, decay);
      const V residual = g - x[1];
      acc.add(0, residual * residual / (x[2] + eps));
    }
  };
  Body for_tensor(int64_t) const {
    return {splat<V>(args.hyper[0]), splat<V>(args.hyper[1]), args.hyper[1] != 0.0};
  }
};

// Arrays: p, g, exp_avg, exp_avg_sq, max_exp_avg_sq (absent without amsgrad).
// hyper: beta2, eps, weight_decay.
// per tensor: W/(W+w), w/(W+w), 1/sqrt(bc2), -lr/bc1.
template <typename T>
struct TAdamApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 5, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = 0b11111, kWrite = 0b11101;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    V beta2, one_minus_beta2, eps, weight_decay, keep, take, inv_sqrt_bc2, step;
    bool decay, amsgrad;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[0];
      const V g = with_weight_decay(x[1], p, weight_decay, decay);
      V& m = x[2];
      V& v = x[3];
      m = m * keep + take * g;
      v = v * beta2 + one_minus_beta2 * g * g;
      p = p + step * (m / adam_denominator(v, amsgrad ? &x[4] : nullptr, inv_sqrt_bc2, eps));
    }
  };
  Body for_tensor(int64_t t) const {
    const auto& h = args.hyper;
    const auto& c = args.per_tensor[t];
    return {splat<V>(h[0]), splat<V>(1.0 - h[0]), splat<V>(h[1]), splat<V>(h[2]),
            splat<V>(c[0]), splat<V>(c[1]),       splat<V>(c[2]), splat<V>(c[3]),
            h[2] != 0.0,    h[3] != 0.0};
  }
};

}  // namespace

void register_tadam(PassTable& table) {
  register_pass<TAdamDistance>(table, Pass::TAdamDistance);
  register_pass<TAdamApply>(table, Pass::TAdamApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
