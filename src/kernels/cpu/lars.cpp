// LARS: the norms of p and g (pass 1), then the update with momentum (pass 2).

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays: p, g. Sums: ||p||^2, ||g||^2.
template <typename T>
struct LarsNorms {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 2, kWide = 0, kSums = 2;
  static constexpr unsigned kRead = 0b11, kWrite = 0;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      acc.add_square(0, x[0]);
      acc.add_square(1, x[1]);
    }
  };
  Body for_tensor(int64_t) const { return {}; }
};

// Arrays: p, g, momentum buffer (absent without momentum).
// hyper: weight_decay, momentum, dampening, nesterov.
// per tensor: -lr * local_lr, buffer_is_new.
template <typename T>
struct LarsApply {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 3, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = 0b111, kWrite = 0b101;
  static constexpr int kGrad = 1;
  const PassArgs& args;

  struct Body {
    V weight_decay, momentum, one_minus_dampening, step;
    bool decay, with_momentum, nesterov, buffer_is_new;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[0];
      V direction = with_weight_decay(x[1], p, weight_decay, decay);
      if (with_momentum) {
        V& buffer = x[2];
        buffer = buffer_is_new ? direction : buffer * momentum + one_minus_dampening * direction;
        direction = nesterov ? direction + momentum * buffer : buffer;
      }
      p = p + step * direction;
    }
  };
  Body for_tensor(int64_t t) const {
    const auto& h = args.hyper;
    const auto& c = args.per_tensor[t];
    return {splat<V>(h[0]), splat<V>(h[1]), splat<V>(1.0 - h[2]), splat<V>(c[0]),
            h[0] != 0.0,    h[1] != 0.0,    h[3] != 0.0,          c[1] != 0.0};
  }
};

}  // namespace

void register_lars(PassTable& table) {
  register_pass<LarsNorms>(table, Pass::LarsNorms);
  register_pass<LarsApply>(table, Pass::LarsApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
