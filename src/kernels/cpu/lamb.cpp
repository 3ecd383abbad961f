// LAMB and RaLars: Adam moments without (LAMB) or with rectified (RaLars) bias
// correction, scaled by a whole-tensor trust ratio. Pass 1 updates the moments
// and sums ||p||^2 and ||u||^2; pass 2 recomputes u from the stored moments
// (cheaper than storing it) and applies it.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays of every pass here: p, g, exp_avg, exp_avg_sq.
// hyper: beta1, beta2, eps, weight_decay.
template <typename V>
struct Moments {
  V beta1, one_minus_beta1, beta2, one_minus_beta2;
  explicit Moments(const PassArgs& args)
      : beta1(splat<V>(args.hyper[0])), one_minus_beta1(splat<V>(1.0 - args.hyper[0])),
        beta2(splat<V>(args.hyper[1])), one_minus_beta2(splat<V>(1.0 - args.hyper[1])) {}
  HOLOCRON_KERNEL_INLINE void operator()(const V& g, V& m, V& v) const {
    m = m * beta1 + one_minus_beta1 * g;
    v = v * beta2 + one_minus_beta2 * g * g;
  }
};

// The direction before the trust ratio.
// LAMB: m / (sqrt(v) + eps) + wd * p.
template <typename V>
struct LambDirection {
  V eps, weight_decay;
  bool decay;
  LambDirection(const PassArgs& args, int64_t)
      : eps(splat<V>(args.hyper[2])), weight_decay(splat<V>(args.hyper[3])), decay(args.hyper[3] != 0.0) {}
  HOLOCRON_KERNEL_INLINE V operator()(const V& p, const V& m, const V& v) const {
    const V u = m / (v.sqrt() + eps);
    return with_weight_decay(u, p, weight_decay, decay);
  }
};

// RaLars, per tensor: 1/bc1, 1/bc2, rectification r, mode (0 rectified, 1 adaptive
// without rectification, 2 momentum only), then + wd * p.
template <typename V>
struct RaLarsDirection {
  V eps, weight_decay, inv_bc1, inv_bc2, rectification;
  int mode;
  bool decay;
  RaLarsDirection(const PassArgs& args, int64_t t)
      : eps(splat<V>(args.hyper[2])), weight_decay(splat<V>(args.hyper[3])),
        inv_bc1(splat<V>(args.per_tensor[t][0])), inv_bc2(splat<V>(args.per_tensor[t][1])),
        rectification(splat<V>(args.per_tensor[t][2])), mode(static_cast<int>(args.per_tensor[t][3])),
        decay(args.hyper[3] != 0.0) {}
  HOLOCRON_KERNEL_INLINE V operator()(const V& p, const V& m, const V& v) const {
    V u = m * inv_bc1;
    if (mode != 2) u = u / ((v * inv_bc2).sqrt() + eps);
    if (mode == 0) u = u * rectification;
    return with_weight_decay(u, p, weight_decay, decay);
  }
};

// Half and bfloat16 moments would lose what pass 2 needs if stored rounded
// (a second moment that rounds to zero turns m / (sqrt(v) + eps) into m / eps):
// for them pass 1 only reads, and pass 2 updates the moments again from the
// same inputs and stores them (2 more bytes per element).
template <typename T>
constexpr bool kMomentsInApply = is_reduced_v<T>;

template <typename T, template <typename> class Direction>
struct TrustMoments {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 4, kWide = 0, kSums = 2;
  static constexpr unsigned kRead = 0b1111, kWrite = kMomentsInApply<T> ? 0 : 0b1100;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    Moments<V> moments;
    Direction<V> direction;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      moments(x[1], x[2], x[3]);
      acc.add_square(0, x[0]);
      acc.add_square(1, direction(x[0], x[2], x[3]));
    }
  };
  Body for_tensor(int64_t t) const { return {Moments<V>(args), Direction<V>(args, t)}; }
};

// Pass 2; per tensor (after the direction's own): -lr * local_lr at index 4.
template <typename T, template <typename> class Direction>
struct TrustApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 4, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = kMomentsInApply<T> ? 0b1111 : 0b1101;
  static constexpr int kGrad = 1;
  static constexpr unsigned kWrite = kMomentsInApply<T> ? 0b1101 : 0b0001;
  const PassArgs& args;

  struct Body {
    Moments<V> moments;
    Direction<V> direction;
    V step;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      if constexpr (kMomentsInApply<T>) moments(x[1], x[2], x[3]);
      x[0] = x[0] + step * direction(x[0], x[2], x[3]);
    }
  };
  Body for_tensor(int64_t t) const {
    return {Moments<V>(args), Direction<V>(args, t), splat<V>(args.per_tensor[t][4])};
  }
};

template <typename T> using LambMoments = TrustMoments<T, LambDirection>;
template <typename T> using LambApply = TrustApply<T, LambDirection>;
template <typename T> using RaLarsMoments = TrustMoments<T, RaLarsDirection>;
template <typename T> using RaLarsApply = TrustApply<T, RaLarsDirection>;

}  // namespace

void register_lamb(PassTable& table) {
  register_pass<LambMoments>(table, Pass::LambMoments);
  register_pass<LambApply>(table, Pass::LambApply);
  register_pass<RaLarsMoments>(table, Pass::RaLarsMoments);
  register_pass<RaLarsApply>(table, Pass::RaLarsApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
