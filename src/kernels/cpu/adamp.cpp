// AdamP: Adam moments (pass 1, which also sums what the projection decision
// needs), then the update with the radial part removed when the weight is
// nearly orthogonal to its gradient (pass 2, recomputing q from the moments).

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays of both passes: p, g, exp_avg, exp_avg_sq, max_exp_avg_sq (absent
// without amsgrad). hyper: beta1, beta2, eps, weight_decay, amsgrad.
// per tensor: 1/bc1, 1/sqrt(bc2), then for pass 2: -lr, and the projection
// coefficient c in q - c*p (0: no projection).
template <typename V>
struct AdamPDirection {
  V eps, inv_bc1, inv_sqrt_bc2;
  bool amsgrad;
  AdamPDirection(const PassArgs& args, int64_t t)
      : eps(splat<V>(args.hyper[2])), inv_bc1(splat<V>(args.per_tensor[t][0])),
        inv_sqrt_bc2(splat<V>(args.per_tensor[t][1])), amsgrad(args.hyper[4] != 0.0) {}
  // q = (m / bc1) / denom; the running max (if any) must already hold this step's v.
  HOLOCRON_KERNEL_INLINE V operator()(const V& m, const V& v, V* max_v) const {
    return (m * inv_bc1) / adam_denominator(v, amsgrad ? max_v : nullptr, inv_sqrt_bc2, eps);
  }
};

// g' = g + wd*p, and the Adam moments of g'.
template <typename V>
struct AdamPMomentUpdate {
  V beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay;
  bool decay;
  explicit AdamPMomentUpdate(const PassArgs& args)
      : beta1(splat<V>(args.hyper[0])), one_minus_beta1(splat<V>(1.0 - args.hyper[0])),
        beta2(splat<V>(args.hyper[1])), one_minus_beta2(splat<V>(1.0 - args.hyper[1])),
        weight_decay(splat<V>(args.hyper[3])), decay(args.hyper[3] != 0.0) {}
  HOLOCRON_KERNEL_INLINE V operator()(const V& p, const V& grad, V& m, V& v) const {
    const V g = with_weight_decay(grad, p, weight_decay, decay);
    m = m * beta1 + one_minus_beta1 * g;
    v = v * beta2 + one_minus_beta2 * g * g;
    return g;
  }
};

// Half and bfloat16 moments would lose what pass 2 needs if stored rounded:
// for them pass 1 only reads, and pass 2 updates the moments (and the
// running max) again from the same inputs and stores them.
template <typename T>
constexpr bool kMomentsInApply = is_reduced_v<T>;

// Sums: p.g', ||p||^2, ||g'||^2, p.q, in double: the projection is decided by
// comparing their cosine with delta / sqrt(numel), and a 1-element parameter
// with delta = 1 sits exactly on that edge (cosine +-1 only if the products
// are exact).
template <typename T>
struct AdamPMoments {
  using scalar_t = T;
  using sum_t = double;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 5, kWide = 0, kSums = 4;
  static constexpr unsigned kRead = 0b11111, kWrite = kMomentsInApply<T> ? 0 : 0b11100;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    AdamPMomentUpdate<V> moments;
    AdamPDirection<V> direction;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V& p = x[0];
      const V g = moments(p, x[1], x[2], x[3]);
      const V q = direction(x[2], x[3], &x[4]);
      acc.add_product(0, p, g);
      acc.add_square(1, p);
      acc.add_square(2, g);
      acc.add_product(3, p, q);
    }
  };
  Body for_tensor(int64_t t) const { return {AdamPMomentUpdate<V>(args), AdamPDirection<V>(args, t)}; }
};

template <typename T>
struct AdamPApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 5, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = kMomentsInApply<T> ? 0b11111 : 0b11101;
  static constexpr int kGrad = 1;
  static constexpr unsigned kWrite = kMomentsInApply<T> ? 0b11101 : 0b00001;
  const PassArgs& args;

  struct Body {
    AdamPMomentUpdate<V> moments;
    AdamPDirection<V> direction;
    V step, projection;
    bool project;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[0];
      if constexpr (kMomentsInApply<T>) moments(p, x[1], x[2], x[3]);
      V q = direction(x[2], x[3], &x[4]);
      if (project) q = q - projection * p;
      p = p + step * q;
    }
  };
  Body for_tensor(int64_t t) const {
    const auto& c = args.per_tensor[t];
    return {AdamPMomentUpdate<V>(args), AdamPDirection<V>(args, t), splat<V>(c[2]), splat<V>(c[3]),
            c[3] != 0.0};
  }
};

}  // namespace

void register_adamp(PassTable& table) {
  register_pass<AdamPMoments>(table, Pass::AdamPMoments);
  register_pass<AdamPApply>(table, Pass::AdamPApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
