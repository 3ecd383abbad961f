// Lookahead's and Scout's synchronisation, and Scout's running statistics.

#include "kernels/cpu/driver.h"

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// slow += rate * (fast - slow) with ATen's lerp formula; fast = slow, as stored (S).
template <typename T, typename S>
struct LookaheadSync {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr auto kSlot = protocol::slots<protocol::lookahead::Arrays>();
  static constexpr int kNarrow = protocol::array_count<protocol::lookahead::Arrays>(), kWide = 0, kSums = 0;
  static constexpr unsigned kState = protocol::StateArrays<protocol::lookahead::Arrays>::value;
  static constexpr unsigned kRead = protocol::slot_set(kSlot.fast, kSlot.slow), kWrite = kRead;
  // The weights, Kahan-compensated where the base compensates them: the sync reads p + c, and
  // leaves p + c equal to the slow weights.
  static constexpr int kParam = kSlot.fast;
  const PassArgs& args;

  struct Body {
    V rate, one_minus_rate;
    bool move, small_rate;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      V& fast = x[kSlot.fast];
      V& slow = x[kSlot.slow];
      if (move) {
        // ATen's lerp formula for this weight (it rounds once more than ATen's fused one).
        slow = round_through<S>(small_rate ? slow + rate * (fast - slow) : fast - (fast - slow) * one_minus_rate);
      }
      fast = slow;
    }
  };
  Body for_tensor(int64_t) const {
    const double rate = args.constants.get<protocol::lookahead::Constants>().sync_rate;
    return {splat<V>(rate), splat<V>(1.0 - rate), rate > 0.0, rate < 0.5};
  }
};

namespace scout = protocol::scout;
constexpr auto kScoutSlot = protocol::slots<scout::Arrays>();
constexpr int kScoutArrays = protocol::array_count<scout::Arrays>();

// Welford's update with the change u = fast - prev, rounded to the
// parameter's dtype as the reference's parameter copies are. The statistics are stored as S.
template <typename T, typename S>
struct ScoutAccumulate {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = kScoutArrays, kWide = 0, kSums = 0;
  static constexpr unsigned kState = protocol::StateArrays<scout::Arrays>::value;
  static constexpr unsigned kRead = protocol::slot_set(kScoutSlot.fast, kScoutSlot.prev, kScoutSlot.mean,
                                                       kScoutSlot.m2, kScoutSlot.max, kScoutSlot.min);
  static constexpr unsigned kWrite = kRead & ~(1u << kScoutSlot.fast);
  const PassArgs& args;

  struct Body {
    V weight;
    bool first;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A&) const {
      const V change = round_to<T>(x[kScoutSlot.fast] - x[kScoutSlot.prev]);
      V& mean = x[kScoutSlot.mean];
      V& m2 = x[kScoutSlot.m2];
      V& max = x[kScoutSlot.max];
      V& min = x[kScoutSlot.min];
      x[kScoutSlot.prev] = x[kScoutSlot.fast];
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
  Body for_tensor(int64_t) const {
    const int64_t count = args.constants.get<scout::AccumulateConstants>().count;
    return {splat<V>(1.0 / static_cast<double>(count + 1)), count == 0};
  }
};

// Sums: the ratios std(u) / max|u - mean(u)| that are numbers, and how many.
template <typename T, typename S>
struct ScoutCoherence {
  using scalar_t = T;
  using state_t = S;
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kNarrow = kScoutArrays, kWide = 0, kSums = 2;
  static constexpr unsigned kState = protocol::StateArrays<scout::Arrays>::value;
  static constexpr unsigned kRead =
      protocol::slot_set(kScoutSlot.mean, kScoutSlot.m2, kScoutSlot.max, kScoutSlot.min);
  static constexpr unsigned kWrite = 0;
  const PassArgs& args;

  struct Body {
    V degrees_of_freedom;
    template <typename A>
    HOLOCRON_KERNEL_INLINE void operator()(V* x, A& acc) const {
      const V& mean = x[kScoutSlot.mean];
      const V stddev = (x[kScoutSlot.m2] / degrees_of_freedom).sqrt();
      const V max_deviation = at::vec::maximum(x[kScoutSlot.max] - mean, mean - x[kScoutSlot.min]);
      acc.add_numbers(0, 1, stddev / max_deviation);
    }
  };
  Body for_tensor(int64_t) const {
    const int64_t count = args.constants.get<scout::CoherenceConstants>().count;
    return {splat<V>(static_cast<double>(count - 1))};
  }
};

}  // namespace

void register_wrappers(PassTable& table) {
  // Slow weights and Scout's statistics are never 8-bit (their base's 8-bit state keeps them in
  // float32).
  register_pass<LookaheadSync, false>(table, Pass::LookaheadSync);
  register_pass<ScoutAccumulate, false>(table, Pass::ScoutAccumulate);
  register_pass<ScoutCoherence, false>(table, Pass::ScoutCoherence);
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
