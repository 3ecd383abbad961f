// Lookahead's and Scout's synchronisation, and Scout's running statistics.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Arrays: fast, slow. hyper: sync_rate.
// slow += rate * (fast - slow) with ATen's lerp formula; fast = slow.
template <typename T>
struct LookaheadSync {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 2, kWide = 0, kSums = 0;
  static constexpr unsigned kRead = 0b11, kWrite = 0b11;
  const PassArgs& args;

  struct Body {
    V rate, one_minus_rate;
    bool move, small_rate;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& fast = x[0];
      V& slow = x[1];
      if (move) {
        // ATen's lerp formula for this weight (it rounds once more than ATen's fused one).
        slow = small_rate ? slow + rate * (fast - slow) : fast - (fast - slow) * one_minus_rate;
      }
      fast = slow;
    }
  };
  Body for_tensor(int64_t) const {
    const double rate = args.hyper[0];
    return {splat<V>(rate), splat<V>(1.0 - rate), rate > 0.0, rate < 0.5};
  }
};

// Arrays: fast, prev (the parameter's dtype); mean, m2, max, min (its math
// type). hyper: count (changes folded in before this one), 1 / (count + 1).
// Welford's update with the change u = fast - prev, rounded to the
// parameter's dtype as the reference's parameter copies are.
template <typename T>
struct ScoutAccumulate {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 2, kWide = 4, kSums = 0;
  static constexpr unsigned kRead = 0b111111, kWrite = 0b111110;
  const PassArgs& args;

  struct Body {
    V weight;
    bool first;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      const V change = round_to<T>(x[0] - x[1]);
      V& mean = x[2];
      V& m2 = x[3];
      V& max = x[4];
      V& min = x[5];
      x[1] = x[0];
      if (first) {
        mean = change;
        m2 = V(0);
        max = change;
        min = change;
        return;
      }
      const V delta = change - mean;
      mean = mean + weight * delta;
      m2 = m2 + delta * (change - mean);
      max = at::vec::maximum(max, change);
      min = at::vec::minimum(min, change);
    }
  };
  Body for_tensor(int64_t) const { return {splat<V>(args.hyper[1]), args.hyper[0] == 0.0}; }
};

// Arrays as ScoutAccumulate (fast unused). hyper: count - 1.
// Sums: the ratios std(u) / max|u - mean(u)| that are numbers, and how many.
template <typename T>
struct ScoutCoherence {
  using scalar_t = T;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = 2, kWide = 4, kSums = 2;
  static constexpr unsigned kRead = 0b111100, kWrite = 0;
  const PassArgs& args;

  struct Body {
    V degrees_of_freedom;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V& mean = x[2];
      const V stddev = (x[3] / degrees_of_freedom).sqrt();
      const V max_deviation = at::vec::maximum(x[4] - mean, mean - x[5]);
      acc.add_numbers(0, 1, stddev / max_deviation);
    }
  };
  Body for_tensor(int64_t) const { return {splat<V>(args.hyper[0])}; }
};

}  // namespace

void register_wrappers(PassTable& table) {
  register_pass<LookaheadSync>(table, Pass::LookaheadSync);
  register_pass<ScoutAccumulate>(table, Pass::ScoutAccumulate);
  register_pass<ScoutCoherence>(table, Pass::ScoutCoherence);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
