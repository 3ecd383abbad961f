// LAMB and RaLars: Adam moments without (LAMB) or with rectified (RaLars) bias
// correction, scaled by a whole-tensor trust ratio. Pass 1 updates the moments
// and sums ||p||^2 and ||u||^2; pass 2 recomputes u from the stored moments
// (cheaper than storing it) and applies it.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::lamb;
constexpr auto kSlot = protocol::slots<proto::Arrays>();

template <typename V>
struct Moments {
  V beta1, grad_weight, beta2, one_minus_beta2;
  explicit Moments(const proto::Constants& h)
      : beta1(splat<V>(h.beta1)), grad_weight(splat<V>(h.grad_weight)),
        beta2(splat<V>(h.beta2)), one_minus_beta2(splat<V>(1.0 - h.beta2)) {}
  HOLOCRON_KERNEL_INLINE void operator()(const V& g, V& m, V& v) const {
    m = m * beta1 + grad_weight * g;
    v = v * beta2 + one_minus_beta2 * g * g;
  }
};

// What a direction u = Derived()(p, m, v) gives the two passes: pass 1 sums ||p||^2 and ||u||^2,
// pass 2 applies u; g is not read again.
template <typename Derived, typename V>
struct PlainTrustDirection {
  static constexpr int kSums = 2;
  static constexpr bool kReadsGrad = false;
  template <typename A>
  HOLOCRON_KERNEL_INLINE void sum(A& acc, const V& p, const V&, const V& m, const V& v) const {
    acc.add_square(0, p);
    acc.add_square(1, update(p, V(), m, v));
  }
  HOLOCRON_KERNEL_INLINE V update(const V& p, const V&, const V& m, const V& v) const {
    return static_cast<const Derived&>(*this)(p, m, v);
  }
};

// The direction before the trust ratio, and the step that applies it.
// LAMB: (m * inv_bc1) / (sqrt(v) * inv_sqrt_bc2 + eps) + wd * p. Without bias
// correction the factors are 1 and the products exact: the reference's bits.
template <typename V>
struct LambDirection : PlainTrustDirection<LambDirection<V>, V> {
  using PerTensor = protocol::lamb::PerTensor;
  V eps, weight_decay, inv_bc1, inv_sqrt_bc2;
  bool decay;
  LambDirection(const proto::Constants& h, const PerTensor& c)
      : eps(splat<V>(h.eps)), weight_decay(splat<V>(h.weight_decay)), inv_bc1(splat<V>(c.inv_bc1)),
        inv_sqrt_bc2(splat<V>(c.inv_sqrt_bc2)), decay(h.weight_decay != 0.0) {}
  // Before the weight decay: what caution masks.
  HOLOCRON_KERNEL_INLINE V adam_step(const V& m, const V& v) const {
    return (m * inv_bc1) / (v.sqrt() * inv_sqrt_bc2 + eps);
  }
  HOLOCRON_KERNEL_INLINE V operator()(const V& p, const V& m, const V& v) const {
    return with_weight_decay(adam_step(m, v), p, weight_decay, decay);
  }
};

// RaLars: (m / bc1) / (sqrt(v / bc2) + eps), rectified or not, or m / bc1
// alone (protocol::ralars::Mode), then + wd * p.
template <typename V>
struct RaLarsDirection : PlainTrustDirection<RaLarsDirection<V>, V> {
  using PerTensor = protocol::ralars::PerTensor;
  using Mode = protocol::ralars::Mode;
  V eps, weight_decay, inv_bc1, inv_bc2, rectification;
  Mode mode;
  bool decay;
  RaLarsDirection(const proto::Constants& h, const PerTensor& c)
      : eps(splat<V>(h.eps)), weight_decay(splat<V>(h.weight_decay)), inv_bc1(splat<V>(c.inv_bc1)),
        inv_bc2(splat<V>(c.inv_bc2)), rectification(splat<V>(c.rectification)), mode(c.mode),
        decay(h.weight_decay != 0.0) {}
  HOLOCRON_KERNEL_INLINE V operator()(const V& p, const V& m, const V& v) const {
    V u = m * inv_bc1;
    if (mode != Mode::kMomentum) u = u / ((v * inv_bc2).sqrt() + eps);
    if (mode == Mode::kRectified) u = u * rectification;
    return with_weight_decay(u, p, weight_decay, decay);
  }
};

// LAMB with caution (timm's): d = adam_step(m, v) is kept where d * g > 0. Pass 1 sums ||p||^2,
// the kept count k, ||kept d||^2 and p . kept d, from which the host takes the scale
// s = 1 / max(k / n, 1e-3) and ||u||^2 = s^2 ||kept d||^2 + 2 wd s (p . kept d) + wd^2 ||p||^2 of
// u = s * kept d + wd * p; pass 2 applies u, reading g again for the mask.
template <typename V>
struct CautiousLambDirection : LambDirection<V> {
  static constexpr int kSums = 4;
  static constexpr bool kReadsGrad = true;
  V caution_scale;
  CautiousLambDirection(const proto::Constants& h, const proto::PerTensor& c)
      : LambDirection<V>(h, c), caution_scale(splat<V>(c.caution_scale)) {}
  template <typename A>
  HOLOCRON_KERNEL_INLINE void sum(A& acc, const V& p, const V& g, const V& m, const V& v) const {
    const V d = this->adam_step(m, v);
    const auto keep = d * g > V(0);
    const V kept = V::blendv(V(0), d, keep);
    acc.add_square(0, p);
    acc.add(1, V::blendv(V(0), V(1), keep));
    acc.add_square(2, kept);
    acc.add_product(3, kept, p);
  }
  HOLOCRON_KERNEL_INLINE V update(const V& p, const V& g, const V& m, const V& v) const {
    const V d = this->adam_step(m, v);
    return with_weight_decay(V::blendv(V(0), d * caution_scale, d * g > V(0)), p, this->weight_decay,
                             this->decay);
  }
};

// Moments stored narrower than the math type (half or bfloat16, or float32 state of float64
// parameters) would lose what pass 2 needs if stored rounded
// (a second moment that rounds to zero turns m / (sqrt(v) + eps) into m / eps):
// for them pass 1 only reads, and pass 2 updates the moments again from the
// same inputs and stores them (2 more bytes per element).
template <typename T, typename S>
constexpr bool kMomentsInApply = !std::is_same_v<S, opmath_t<T>>;

constexpr unsigned kAll = protocol::slot_set(kSlot.param, kSlot.grad, kSlot.exp_avg, kSlot.exp_avg_sq);
constexpr unsigned kMomentArrays = protocol::slot_set(kSlot.exp_avg, kSlot.exp_avg_sq);

// Pass 1: the moments, and the direction's sums.
template <typename T, typename S, template <typename> class Direction>
struct TrustMoments {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = Direction<V>::kSums;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = kAll, kWrite = kMomentsInApply<T, S> ? 0 : kMomentArrays;
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    Moments<V> moments;
    Direction<V> direction;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V& p = x[kSlot.param];
      const V& g = x[kSlot.grad];
      V& m = x[kSlot.exp_avg];
      V& v = x[kSlot.exp_avg_sq];
      moments(g, m, v);
      direction.sum(acc, p, g, m, v);
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    return {Moments<V>(h), Direction<V>(h, args.per_tensor[t].get<typename Direction<V>::PerTensor>())};
  }
};

// Pass 2: p += step * u.
template <typename T, typename S, template <typename> class Direction>
struct TrustApply {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead =
      kMomentsInApply<T, S> || Direction<V>::kReadsGrad ? kAll : kAll & ~(1u << kSlot.grad);
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  static constexpr unsigned kWrite =
      protocol::slot_set(kSlot.param) | (kMomentsInApply<T, S> ? kMomentArrays : 0u);
  const PassArgs& args;

  struct Body {
    Moments<V> moments;
    Direction<V> direction;
    V step, decay;
    bool decays;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      const V& g = x[kSlot.grad];  // read only where the pass reads it (kRead)
      V& m = x[kSlot.exp_avg];
      V& v = x[kSlot.exp_avg_sq];
      if constexpr (kMomentsInApply<T, S>) moments(g, m, v);
      const V u = direction.update(p, g, m, v);
      // A branch, not a factor of 1: the compiler may fuse either product into the add.
      if (decays) p = p * decay;
      p = p + step * u;
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    const auto c = args.per_tensor[t].get<typename Direction<V>::PerTensor>();
    return {Moments<V>(h), Direction<V>(h, c), splat<V>(c.step), splat<V>(h.decay), h.decay != 1.0};
  }
};

template <typename T, typename S> using LambMoments = TrustMoments<T, S, LambDirection>;
template <typename T, typename S> using LambApply = TrustApply<T, S, LambDirection>;
template <typename T, typename S> using CautiousLambMoments = TrustMoments<T, S, CautiousLambDirection>;
template <typename T, typename S> using CautiousLambApply = TrustApply<T, S, CautiousLambDirection>;
template <typename T, typename S> using RaLarsMoments = TrustMoments<T, S, RaLarsDirection>;
template <typename T, typename S> using RaLarsApply = TrustApply<T, S, RaLarsDirection>;

}  // namespace

void register_lamb(PassTable& table) {
  register_pair<LambMoments, LambApply>(table, Pass::LambMoments, Pass::LambApply);
  register_pair<CautiousLambMoments, CautiousLambApply>(table, Pass::LambCautiousMoments, Pass::LambCautiousApply);
  register_pair<RaLarsMoments, RaLarsApply>(table, Pass::RaLarsMoments, Pass::RaLarsApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
