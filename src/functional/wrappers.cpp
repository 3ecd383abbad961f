// Lookahead and Scout: synchronisation of slow weights and Scout's running
// statistics of per-step changes.

#include "functional/common.h"

namespace holocron::optim::functional {

using namespace detail;

void lookahead_sync_(TensorList fast, TensorList slow, double sync_rate) {
  check_hyper("Lookahead", "sync_rate", sync_rate, 0.0, true, 1.0, true);
  check_group("Lookahead", fast, slow, {});
  for (size_t i = 0; i < fast.size(); ++i) {
    if (sync_rate > 0.0) slow[i].lerp_(fast[i], sync_rate);
    fast[i].copy_(slow[i]);
  }
}

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
  }
}

}  // namespace

void scout_accumulate_(TensorList fast, const ScoutStats& s, int64_t count) {
  TORCH_CHECK(count >= 0, "Scout: count must be >= 0, got ", count);
  check_stats("Scout", fast, s);
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

double scout_coherence(const ScoutStats& s, int64_t count) {
  TORCH_CHECK(count >= 1, "Scout: coherence needs at least one change, got ", count);
  check_stats("Scout", s.prev, s);
  double total = 0.0;
  int64_t counted = 0;
  for (size_t i = 0; i < s.mean.size(); ++i) {
    auto stddev = (s.m2[i] / static_cast<double>(count - 1)).sqrt_();
    auto max_deviation = at::maximum(s.max[i] - s.mean[i], s.mean[i] - s.min[i]);
    auto ratio = stddev.div_(max_deviation);
    // Fix 5: 0/0 where an element's changes did not vary carries no information.
    auto valid = ratio.isnan().logical_not_();
    const auto n_valid = valid.sum().item<int64_t>();
    if (n_valid == 0) continue;
    total += ratio.masked_select(valid).sum().item<double>() / static_cast<double>(n_valid);
    ++counted;
  }
  return counted == 0 ? 0.0 : total / static_cast<double>(counted);
}

}  // namespace holocron::optim::functional
