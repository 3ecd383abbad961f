// AdamP: Adam moments (pass 1, which also sums what the projection decision
// needs), then the update with the radial part removed when the weight is
// nearly orthogonal to its gradient (pass 2, recomputing q from the moments).
// The host hands a tensor over whole, or as one row per output channel for
// timm's channel-wise projection: each row then gets its own sums and
// coefficients.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::adamp;
constexpr auto kSlot = protocol::slots<proto::Arrays>();

// q = (m / bc1) / denom, or with Nesterov ((beta1 * m + (1 - beta1) * g') / bc1) / denom; with
// caution (pytorch-optimizer's) m only where m * g' > 0, rescaled, before Nesterov's mix. The
// running max (if any) must already hold this step's v.
template <typename V>
struct AdamPDirection {
  V eps, inv_bc1, inv_sqrt_bc2, beta1, one_minus_beta1, caution_scale;
  bool amsgrad, nesterov, caution;
  AdamPDirection(const proto::Constants& h, const proto::PerTensor& c)
      : eps(splat<V>(h.eps)), inv_bc1(splat<V>(c.inv_bc1)), inv_sqrt_bc2(splat<V>(c.inv_sqrt_bc2)),
        beta1(splat<V>(h.beta1)), one_minus_beta1(splat<V>(1.0 - h.beta1)), caution_scale(splat<V>(c.caution_scale)),
        amsgrad(h.amsgrad), nesterov(h.nesterov), caution(h.caution) {}
  HOLOCRON_KERNEL_INLINE V operator()(const V& m, const V& g, const V& v, V* max_v) const {
    const V kept = caution ? V::blendv(V(0), m * caution_scale, m * g > V(0)) : m;
    const V first = nesterov ? beta1 * kept + one_minus_beta1 * g : kept;
    return (first * inv_bc1) / adam_denominator(v, amsgrad ? max_v : nullptr, inv_sqrt_bc2, eps);
  }
};

// g' = g + wd*p, and the Adam moments of g'.
template <typename V>
struct AdamPMomentUpdate {
  V beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay;
  bool decay;
  explicit AdamPMomentUpdate(const proto::Constants& h)
      : beta1(splat<V>(h.beta1)), one_minus_beta1(splat<V>(1.0 - h.beta1)), beta2(splat<V>(h.beta2)),
        one_minus_beta2(splat<V>(1.0 - h.beta2)), weight_decay(splat<V>(h.weight_decay)),
        decay(h.weight_decay != 0.0) {}
  HOLOCRON_KERNEL_INLINE V decayed_grad(const V& p, const V& grad) const {
    return with_weight_decay(grad, p, weight_decay, decay);
  }
  HOLOCRON_KERNEL_INLINE V operator()(const V& p, const V& grad, V& m, V& v) const {
    const V g = decayed_grad(p, grad);
    m = m * beta1 + one_minus_beta1 * g;
    v = v * beta2 + one_minus_beta2 * g * g;
    return g;
  }
};

// Moments stored narrower than the math type (half or bfloat16, or float32 state of float64
// parameters) would lose what pass 2 needs if stored rounded:
// for them pass 1 only reads, and pass 2 updates the moments (and the
// running max) again from the same inputs and stores them.
template <typename T, typename S>
constexpr bool kMomentsInApply = !std::is_same_v<S, opmath_t<T>>;

constexpr unsigned kAll =
    protocol::slot_set(kSlot.param, kSlot.grad, kSlot.exp_avg, kSlot.exp_avg_sq, kSlot.max_exp_avg_sq);
constexpr unsigned kMomentArrays = protocol::slot_set(kSlot.exp_avg, kSlot.exp_avg_sq, kSlot.max_exp_avg_sq);

// Sums: p.g', ||p||^2, ||g'||^2, p.q, in double: the projection is decided by
// comparing their cosine with delta / sqrt(numel), and a 1-element parameter
// with delta = 1 sits exactly on that edge (cosine +-1 only if the products
// are exact).
template <typename T, typename S>
struct AdamPMoments {
  using scalar_t = T;
  using state_t = S;
  using sum_t = double;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 4;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = kAll, kWrite = kMomentsInApply<T, S> ? 0 : kMomentArrays;
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    AdamPMomentUpdate<V> moments;
    AdamPDirection<V> direction;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V& p = x[kSlot.param];
      const V g = moments(p, x[kSlot.grad], x[kSlot.exp_avg], x[kSlot.exp_avg_sq]);
      const V q = direction(x[kSlot.exp_avg], g, x[kSlot.exp_avg_sq], &x[kSlot.max_exp_avg_sq]);
      acc.add_product(0, p, g);
      acc.add_square(1, p);
      acc.add_square(2, g);
      acc.add_product(3, p, q);
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    return {AdamPMomentUpdate<V>(h), AdamPDirection<V>(h, args.per_tensor[t].get<proto::PerTensor>())};
  }
};

// With Nesterov or caution, q reads g' again: the gradient (and p, for a coupled decay) is read in
// pass 2.
template <typename T, typename S, bool kGradInDirection>
struct AdamPApplyPass {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr bool kReadsGrad = kMomentsInApply<T, S> || kGradInDirection;
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = kReadsGrad ? kAll : kAll & ~(1u << kSlot.grad);
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  static constexpr unsigned kWrite =
      protocol::slot_set(kSlot.param) | (kMomentsInApply<T, S> ? kMomentArrays : 0u);
  const PassArgs& args;

  struct Body {
    AdamPMomentUpdate<V> moments;
    AdamPDirection<V> direction;
    V step, projection, decay_factor;
    bool project, decays;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      V g(0);
      if constexpr (kMomentsInApply<T, S>) {
        g = moments(p, x[kSlot.grad], x[kSlot.exp_avg], x[kSlot.exp_avg_sq]);
      } else if constexpr (kGradInDirection) {
        g = moments.decayed_grad(p, x[kSlot.grad]);
      }
      V q = direction(x[kSlot.exp_avg], g, x[kSlot.exp_avg_sq], &x[kSlot.max_exp_avg_sq]);
      // Of the parameter before its decay (the host scaled c for the flattened projection, which
      // is of the decayed one); branches, not factors of 0 or 1, which the compiler may fuse.
      if (project) q = q - projection * p;
      if (decays) p = p * decay_factor;
      p = p + step * q;
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    const auto c = args.per_tensor[t].get<proto::PerTensor>();
    return {AdamPMomentUpdate<V>(h), AdamPDirection<V>(h, c), splat<V>(c.step), splat<V>(c.projection),
            splat<V>(c.decay),       c.projection != 0.0,          c.decay != 1.0};
  }
};

template <typename T, typename S>
using AdamPApply = AdamPApplyPass<T, S, false>;
template <typename T, typename S>
using AdamPApplyReadingGrad = AdamPApplyPass<T, S, true>;

}  // namespace

void register_adamp(PassTable& table) {
  register_pair<AdamPMoments, AdamPApply>(table, Pass::AdamPMoments, Pass::AdamPApply);
  register_pair<AdamPMoments, AdamPApplyReadingGrad>(table, Pass::AdamPMoments, Pass::AdamPApplyReadingGrad);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
