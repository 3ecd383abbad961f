// Lookahead and Scout: checks, then the fused kernels or the reference backend.

#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

namespace {

void check_stats(const char* what, TensorList fast, const ScoutStats& s) {
  TORCH_CHECK(s.prev.size() == fast.size(), what, ": got ", s.prev.size(), " prev for ",
              fast.size(), " parameters");
  for (size_t i = 0; i < fast.size(); ++i) {
    const auto& f = fast[i];
    for (const auto* list : {&s.prev, &s.mean, &s.m2, &s.max, &s.min}) {
      TORCH_CHECK(list->size() == fast.size(), what, ": statistics lists differ in length");
      const auto& t = (*list)[i];
      TORCH_CHECK(t.defined() && t.sizes().equals(f.sizes()) && t.device() == f.device(), what,
                  ": statistics of parameter ", i, " do not fit its shape ", f.sizes());
    }
    // prev holds parameter values; the statistics are state, of one floating dtype: the
    // parameter's, float32 (the math type of half and bfloat16 ones) or bfloat16.
    TORCH_CHECK(s.prev[i].scalar_type() == f.scalar_type(), what, ": prev[", i, "] has dtype ",
                s.prev[i].scalar_type(), " but its parameter has dtype ", f.scalar_type());
    const auto stats = s.mean[i].scalar_type();
    TORCH_CHECK(stats == f.scalar_type() || stats == at::kFloat || stats == at::kBFloat16, what,
                ": the statistics of parameter ", i, " have dtype ", stats, ", not the parameter's (",
                f.scalar_type(), "), float32 or bfloat16");
    for (const auto* list : {&s.m2, &s.max, &s.min}) {
      TORCH_CHECK((*list)[i].scalar_type() == stats, what, ": the statistics of parameter ", i,
                  " differ in dtype (", stats, " and ", (*list)[i].scalar_type(), ")");
    }
  }
}

cpu::protocol::scout::Arrays<TensorList> scout_arrays(TensorList fast, const ScoutStats& s) {
  return {.fast = fast, .prev = s.prev, .mean = s.mean, .m2 = s.m2, .max = s.max, .min = s.min};
}

}  // namespace

void lookahead_sync_(TensorList fast, TensorList slow, double sync_rate, TensorList compensation) {
  check_hyper("Lookahead", "sync_rate", sync_rate, 0.0, true, 1.0, true);
  // The slow weights are the base's state: the parameter's dtype, float32 or bfloat16.
  check_group("Lookahead", fast, fast, {{"slow weights", slow}});
  const CompensatedWeights compensated_weights("Lookahead", fast, compensation);
  auto& scratch = fused_scratch();
  if (!fused_group(scratch.group, fast, cpu::protocol::lookahead::Arrays<TensorList>{.fast = fast, .slow = slow})) {
    return kernels::reference::lookahead_sync(fast, slow, sync_rate);
  }
  auto& args = scratch.fresh_args(0);
  args.constants.set(cpu::protocol::lookahead::Constants{.sync_rate = sync_rate});
  cpu::run(cpu::Pass::LookaheadSync, scratch.group, args);
  mark_written({fast, slow});
}

void scout_accumulate_(TensorList fast, const ScoutStats& s, int64_t count) {
  TORCH_CHECK(count >= 0, "Scout: count must be >= 0, got ", count);
  check_stats("Scout", fast, s);
  auto& scratch = fused_scratch();
  if (!fused_group(scratch.group, fast, scout_arrays(fast, s))) {
    return kernels::reference::scout_accumulate(fast, s, count);
  }
  auto& args = scratch.fresh_args(0);
  args.constants.set(cpu::protocol::scout::AccumulateConstants{.count = count});
  cpu::run(cpu::Pass::ScoutAccumulate, scratch.group, args);
  mark_written({s.prev, s.mean, s.m2, s.max, s.min});
}

double scout_coherence(const ScoutStats& s, int64_t count, const Sharding& sharding) {
  TORCH_CHECK(count >= 1, "Scout: coherence needs at least one change, got ", count);
  check_stats("Scout", s.prev, s);
  check_sharding("Scout", sharding, s.prev);
  auto& scratch = fused_scratch();
  auto& sums = scratch.sums;  // sum of the ratios that are numbers, and their count
  // The coherence reads only the statistics; prev stands in for fast.
  if (fused_group(scratch.group, s.prev, scout_arrays(s.prev, s))) {
    scratch.fresh_args(0).constants.set(cpu::protocol::scout::CoherenceConstants{.count = count});
    cpu::run(cpu::Pass::ScoutCoherence, scratch.group, scratch.args, &sums);
  } else {
    sums = kernels::reference::scout_coherence_sums(s, count);
  }
  all_reduce_sums("Scout", sharding, sums, 2);
  double total = 0.0;
  int64_t counted = 0;
  for (const auto& row : sums) {
    // Unlike pylocron: a parameter none of whose elements gave a number does not count.
    if (row[1] == 0.0) continue;
    total += row[0] / row[1];
    ++counted;
  }
  return counted == 0 ? 0.0 : total / static_cast<double>(counted);
}

}  // namespace holocron::optim::functional
