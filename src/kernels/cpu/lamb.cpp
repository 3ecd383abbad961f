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

// The direction before the trust ratio, and the step that applies it.
// LAMB: (m * inv_bc1) / (sqrt(v) * inv_sqrt_bc2 + eps) + wd * p. Without bias
// correction the factors are 1 and the products exact: the reference's bits.
template <typename V>
struct LambDirection {
  using PerTensor = protocol::lamb::PerTensor;
  V eps, weight_decay, inv_bc1, inv_sqrt_bc2;
  bool decay;
  LambDirection(const proto::Constants& h, const PerTensor& c)
      : eps(splat<V>(h.eps)), weight_decay(splat<V>(h.weight_decay)), inv_bc1(splat<V>(c.inv_bc1)),
        inv_sqrt_bc2(splat<V>(c.inv_sqrt_bc2)), decay(h.weight_decay != 0.0) {}
  HOLOCRON_KERNEL_INLINE V operator()(const V& p, const V& m, const V& v) const {
    const V u = (m * inv_bc1) / (v.sqrt() * inv_sqrt_bc2 + eps);
    return with_weight_decay(u, p, weight_decay, decay);
  }
};

// RaLars: (m / bc1) / (sqrt(v / bc2) + eps), rectified or not, or m / bc1
// alone (protocol::ralars::Mode), then + wd * p.
template <typename V>
struct RaLarsDirection {
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

// Half and bfloat16 moments would lose what pass 2 needs if stored rounded
// (a second moment that rounds to zero turns m / (sqrt(v) + eps) into m / eps):
// for them pass 1 only reads, and pass 2 updates the moments again from the
// same inputs and stores them (2 more bytes per element).
template <typename T>
constexpr bool kMomentsInApply = is_reduced_v<T>;

constexpr unsigned kAll = protocol::slot_set(kSlot.param, kSlot.grad, kSlot.exp_avg, kSlot.exp_avg_sq);
constexpr unsigned kMomentArrays = protocol::slot_set(kSlot.exp_avg, kSlot.exp_avg_sq);

// Pass 1. Sums: ||p||^2, ||u||^2.
template <typename T, template <typename> class Direction>
struct TrustMoments {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 2;
  static constexpr unsigned kRead = kAll, kWrite = kMomentsInApply<T> ? 0 : kMomentArrays;
  static constexpr int kGrad = kSlot.grad;
  const PassArgs& args;

  struct Body {
    Moments<V> moments;
    Direction<V> direction;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      V& p = x[kSlot.param];
      V& m = x[kSlot.exp_avg];
      V& v = x[kSlot.exp_avg_sq];
      moments(x[kSlot.grad], m, v);
      acc.add_square(0, p);
      acc.add_square(1, direction(p, m, v));
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    return {Moments<V>(h), Direction<V>(h, args.per_tensor[t].get<typename Direction<V>::PerTensor>())};
  }
};

// Pass 2: p += step * u.
template <typename T, template <typename> class Direction>
struct TrustApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kRead = kMomentsInApply<T> ? kAll : kAll & ~(1u << kSlot.grad);
  static constexpr int kGrad = kSlot.grad;
  static constexpr unsigned kWrite =
      protocol::slot_set(kSlot.param) | (kMomentsInApply<T> ? kMomentArrays : 0u);
  const PassArgs& args;

  struct Body {
    Moments<V> moments;
    Direction<V> direction;
    V step, decay;
    bool decays;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      V& m = x[kSlot.exp_avg];
      V& v = x[kSlot.exp_avg_sq];
      if constexpr (kMomentsInApply<T>) moments(x[kSlot.grad], m, v);
      // A branch, not a factor of 1: the compiler may fuse either product into the add.
      if (decays) p = p * decay;
      p = p + step * direction(p, m, v);
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    const auto c = args.per_tensor[t].get<typename Direction<V>::PerTensor>();
    return {Moments<V>(h), Direction<V>(h, c), splat<V>(c.step), splat<V>(h.decay), h.decay != 1.0};
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
