// LARS: the norms of p and g (pass 1), then the update with momentum (pass 2).

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::lars;

// Sums: ||p||^2, ||g||^2.
template <typename T, typename S>
struct LarsNorms {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::Arrays>();
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 2;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = protocol::slot_set(kSlot.param, kSlot.grad), kWrite = 0;
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      acc.add_square(0, x[kSlot.param]);
      acc.add_square(1, x[kSlot.grad]);
    }
  };
  Body for_tensor(int64_t) const { return {}; }
};

template <typename T, typename S>
struct LarsApply {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::Arrays>();
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = protocol::slot_set(kSlot.param, kSlot.grad, kSlot.momentum_buffer);
  static constexpr unsigned kWrite = protocol::slot_set(kSlot.param, kSlot.momentum_buffer);
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    V weight_decay, momentum, one_minus_dampening, direction_scale, step, decay_factor;
    bool decay, with_momentum, nesterov, buffer_is_new, decays;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& p = x[kSlot.param];
      // A scale of 1 (the reference's placement of the ratio) leaves the bits as they were.
      V direction = with_weight_decay(x[kSlot.grad], p, weight_decay, decay) * direction_scale;
      if (with_momentum) {
        V& buffer = x[kSlot.momentum_buffer];
        buffer = buffer_is_new ? direction : buffer * momentum + one_minus_dampening * direction;
        direction = nesterov ? direction + momentum * buffer : buffer;
      }
      // A branch, not a factor of 1: the compiler may fuse either product into the add.
      if (decays) p = p * decay_factor;
      p = p + step * direction;
    }
  };
  Body for_tensor(int64_t t) const {
    const auto h = args.constants.get<proto::Constants>();
    const auto c = args.per_tensor[t].get<proto::PerTensor>();
    return {splat<V>(h.weight_decay),
            splat<V>(h.momentum),
            splat<V>(1.0 - h.dampening),
            splat<V>(c.direction_scale),
            splat<V>(c.step),
            splat<V>(h.decay),
            h.weight_decay != 0.0,
            h.momentum != 0.0,
            h.nesterov,
            c.buffer_is_new,
            h.decay != 1.0};
  }
};

}  // namespace

void register_lars(PassTable& table) {
  register_pair<LarsNorms, LarsApply>(table, Pass::LarsNorms, Pass::LarsApply);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
