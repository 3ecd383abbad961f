// Lookahead and Scout: synchronisation of slow weights and Scout's running
// statistics of per-step changes.

#include <ATen/OpMathType.h>

#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

namespace {

// `t` in the math type `dtype`: itself when it has that dtype, else a copy that
// `commit_math` rounds back into it.
at::Tensor in_math(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}
void commit_math(const at::Tensor& t, const at::Tensor& math) {
  if (!math.is_same(t)) t.copy_(math);
}

}  // namespace

void lookahead_sync(TensorList fast, TensorList slow, double sync_rate) {
  for (size_t i = 0; i < fast.size(); ++i) {
    if (CompensatedWeights::of(fast[i]).defined()) {
      // A Kahan-compensated weight: read as p + c in float32, left as the slow weight split.
      ComputeScope scope(fast[i]);
      auto weight = scope.inout(fast[i]);
      if (sync_rate > 0.0) {
        auto moved = in_math(slow[i], at::kFloat);
        moved.lerp_(weight, sync_rate);
        commit_math(slow[i], moved);
      }
      weight.copy_(slow[i]);
      scope.commit();
      continue;
    }
    if (sync_rate > 0.0) {
      if (slow[i].scalar_type() == fast[i].scalar_type()) {
        slow[i].lerp_(fast[i], sync_rate);
      } else {
        // Slow weights of the base's state dtype: the move in the parameter's math type,
        // rounded once into them.
        const auto dtype = at::toOpMathType(fast[i].scalar_type());
        auto moved = in_math(slow[i], dtype);
        moved.lerp_(in_math(fast[i], dtype), sync_rate);
        commit_math(slow[i], moved);
      }
    }
    fast[i].copy_(slow[i]);
  }
}

void scout_accumulate(TensorList fast, const ScoutStats& s, int64_t count) {
  for (size_t i = 0; i < fast.size(); ++i) {
    // Changes are taken in the parameter's dtype, as the reference's buffer of
    // parameter copies does; the statistics are updated in its math type and stored in theirs.
    const auto dtype = at::toOpMathType(fast[i].scalar_type());
    auto change = (fast[i] - s.prev[i]).to(dtype);
    auto mean = in_math(s.mean[i], dtype), m2 = in_math(s.m2[i], dtype);
    auto running_max = in_math(s.max[i], dtype), running_min = in_math(s.min[i], dtype);
    if (count == 0) {
      mean.copy_(change);
      m2.zero_();
      running_max.copy_(change);
      running_min.copy_(change);
    } else {
      auto delta = change - mean;
      mean.add_(delta, 1.0 / static_cast<double>(count + 1));
      m2.addcmul_(delta, change - mean);
      at::maximum_out(running_max, running_max, change);
      at::minimum_out(running_min, running_min, change);
    }
    commit_math(s.mean[i], mean);
    commit_math(s.m2[i], m2);
    commit_math(s.max[i], running_max);
    commit_math(s.min[i], running_min);
    s.prev[i].copy_(fast[i]);
  }
}

Sums scout_coherence_sums(const ScoutStats& s, int64_t count) {
  Sums sums(s.mean.size(), Sums::value_type{});
  for (size_t i = 0; i < s.mean.size(); ++i) {
    const auto dtype = at::toOpMathType(s.prev[i].scalar_type());
    const auto mean = in_math(s.mean[i], dtype);
    auto stddev = (in_math(s.m2[i], dtype) / static_cast<double>(count - 1)).sqrt_();
    auto max_deviation = at::maximum(in_math(s.max[i], dtype) - mean, mean - in_math(s.min[i], dtype));
    auto ratio = stddev.div_(max_deviation);
    // Unlike pylocron: 0/0 where an element's changes did not vary carries no information.
    auto valid = ratio.isnan().logical_not_();
    sums[i][0] = ratio.masked_select(valid).sum().item<double>();
    sums[i][1] = static_cast<double>(valid.sum().item<int64_t>());
  }
  return sums;
}

}  // namespace holocron::optim::kernels::reference
