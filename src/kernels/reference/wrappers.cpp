// Lookahead and Scout: synchronisation of slow weights and Scout's running
// statistics of per-step changes.

#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::kernels::reference {

using namespace functional;
using namespace functional::detail;

void lookahead_sync(TensorList fast, TensorList slow, double sync_rate) {
  for (size_t i = 0; i < fast.size(); ++i) {
    if (sync_rate > 0.0) slow[i].lerp_(fast[i], sync_rate);
    fast[i].copy_(slow[i]);
  }
}

void scout_accumulate(TensorList fast, const ScoutStats& s, int64_t count) {
  for (size_t i = 0; i < fast.size(); ++i) {
    // Changes are taken in the parameter's dtype, as the reference's buffer of
    // parameter copies does; the statistics may be wider.
    auto change = (fast[i] - s.prev[i]).to(s.mean[i].scalar_type());
    if (count == 0) {
      s.mean[i].copy_(change);
      s.m2[i].zero_();
      s.max[i].copy_(change);
      s.min[i].copy_(change);
    } else {
      auto delta = change - s.mean[i];
      s.mean[i].add_(delta, 1.0 / static_cast<double>(count + 1));
      s.m2[i].addcmul_(delta, change - s.mean[i]);
      at::Tensor running_max = s.max[i];
      at::Tensor running_min = s.min[i];
      at::maximum_out(running_max, running_max, change);
      at::minimum_out(running_min, running_min, change);
    }
    s.prev[i].copy_(fast[i]);
  }
}

Sums scout_coherence_sums(const ScoutStats& s, int64_t count) {
  Sums sums(s.mean.size(), Sums::value_type{});
  for (size_t i = 0; i < s.mean.size(); ++i) {
    auto stddev = (s.m2[i] / static_cast<double>(count - 1)).sqrt_();
    auto max_deviation = at::maximum(s.max[i] - s.mean[i], s.mean[i] - s.min[i]);
    auto ratio = stddev.div_(max_deviation);
    // Unlike pylocron: 0/0 where an element's changes did not vary carries no information.
    auto valid = ratio.isnan().logical_not_();
    sums[i][0] = ratio.masked_select(valid).sum().item<double>();
    sums[i][1] = static_cast<double>(valid.sum().item<int64_t>());
  }
  return sums;
}

}  // namespace holocron::optim::kernels::reference
