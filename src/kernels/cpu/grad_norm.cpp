// The squared norm of each unscaled gradient: what global gradient-norm
// clipping (LAMB's and Adan's max_grad_norm) sums over every group, one read
// of the gradients (4 bytes per float32 element) and nothing written.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::grad_norm;

// Sums: ||g||^2.
template <typename T>
struct GradNorms {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::Arrays>();
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 1;
  static constexpr unsigned kRead = protocol::slot_set(kSlot.grad), kWrite = 0;
  static constexpr int kGrad = kSlot.grad, kParam = -1;  // reads no weights
  const PassArgs& args;

  struct Body {
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      acc.add_square(0, x[kSlot.grad]);
    }
  };
  Body for_tensor(int64_t) const { return {}; }
};

}  // namespace

void register_grad_norm(PassTable& table) { register_pass<GradNorms>(table, Pass::GradNorms); }

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
