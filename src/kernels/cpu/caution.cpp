// Cautious Optimizers' mask count (Liang et al. 2024, arXiv 2411.16085): how
// many elements of each tensor keep their update, which the apply passes of the
// algorithms with a `caution` option rescale by. One read of the gradient and
// the first moment (and of p with an L2 weight decay), nothing written.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

namespace proto = protocol::caution;

// Sums: the count of m' * g' > 0 (whole numbers: exact in any lane type for a
// chunk's lane, and summed in double across lanes and chunks).
template <typename T, typename S>
struct CautionCount {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<proto::Arrays>();
  static constexpr int kNarrow = protocol::array_count<proto::Arrays>(), kWide = 0, kSums = 1;
  static constexpr unsigned kState = state_arrays(kNarrow, kSlot.param, kSlot.grad);
  static constexpr unsigned kRead = protocol::slot_set(kSlot.grad, kSlot.exp_avg, kSlot.param), kWrite = 0;
  static constexpr int kGrad = kSlot.grad, kParam = kSlot.param;
  const PassArgs& args;

  struct Body {
    V beta1, grad_weight, weight_decay;
    bool decay;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V g = with_weight_decay(x[kSlot.grad], x[kSlot.param], weight_decay, decay);
      const V m = x[kSlot.exp_avg] * beta1 + grad_weight * g;
      acc.add(0, V::blendv(V(0), V(1), m * g > V(0)));
    }
  };
  Body for_tensor(int64_t) const {
    const auto h = args.constants.get<proto::Constants>();
    return {splat<V>(h.beta1), splat<V>(h.grad_weight), splat<V>(h.weight_decay), h.weight_decay != 0.0};
  }
};

}  // namespace

void register_caution(PassTable& table) { register_pass<CautionCount>(table, Pass::CautionCount); }

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
