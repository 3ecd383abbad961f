// functional::Sharding without a process group: each tensor of a group (and
// its gradient and state) is split into two shards, unevenly, an empty shard
// and a one-element tensor included; two threads play the two ranks, their
// all_reduce callbacks sum the partial sums through a barrier, and over
// several steps the concatenated shards must equal the call on the whole
// tensors (the per-tensor decisions: trust ratios, TAdam's weights, AdamP's
// projection, Scout's coherence, included), on both backends. A control run
// whose all-reduce leaves the partial sums as they are must differ, so the
// comparisons would catch a skipped all-reduce.

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <holocron/optim/functional.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace holocron_test {
namespace {

namespace F = holocron::optim::functional;

// ---- Two ranks in two threads ----------------------------------------------

// An all-reduce (sum) between two threads: each rank deposits its tensor, the
// second to arrive adds rank 0's and rank 1's (one sum, so both ranks get the
// same bits, as a real all-reduce gives), and both copy the total back.
class TwoRankExchange {
 public:
  void all_reduce(int rank, at::Tensor& sums) {
    std::unique_lock<std::mutex> lock(mutex_);
    ++calls_[rank];
    slots_[rank] = sums.clone();
    if (++arrived_ == 2) {
      shapes_differ_ = !slots_[0].sizes().equals(slots_[1].sizes());
      if (!shapes_differ_) total_ = slots_[0] + slots_[1];
      arrived_ = 0;
      ++round_;
      changed_.notify_all();
    } else {
      const int64_t round = round_;
      const bool done = changed_.wait_for(lock, std::chrono::seconds(60), [&] { return round_ != round; });
      TORCH_CHECK(done, "rank ", rank, ": the other rank did not reach the all-reduce in 60 s");
    }
    TORCH_CHECK(!shapes_differ_, "the ranks' partial sums differ in shape");
    sums.copy_(total_);
  }
  int64_t calls(int rank) {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_[rank];
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::array<at::Tensor, 2> slots_;
  at::Tensor total_;
  std::array<int64_t, 2> calls_{0, 0};
  int arrived_ = 0;
  int64_t round_ = 0;
  bool shapes_differ_ = false;
};

// Runs fn(0) here and fn(1) in another thread; rethrows what either threw.
void run_two_ranks(const std::function<void(int)>& fn) {
  std::array<std::exception_ptr, 2> errors;
  std::thread other([&] {
    try {
      fn(1);
    } catch (...) {
      errors[1] = std::current_exception();
    }
  });
  try {
    fn(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  other.join();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

// Restores the process-wide backend a test chooses.
class Backend {
 public:
  explicit Backend(const std::string& name) { F::set_cpu_capability(name); }
  ~Backend() { F::set_cpu_capability("auto"); }
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
};
const std::array<const char*, 2> kBackends = {"auto", "reference"};

// ---- One group, whole or as shards -----------------------------------------

// A group as an algorithm holds it: lists[0] the parameters, then one list
// per state buffer; `host` is state kept on the host (TAdam's moment weights).
struct Replica {
  std::vector<std::vector<at::Tensor>> lists;
  std::vector<double> host;
  std::vector<double> returned;  // what the last step returned (trust ratios, ...)
  int rank = -1;                 // -1: the whole tensors
};

using Tensors = std::vector<at::Tensor>;
using StepFn = std::function<std::vector<double>(Replica&, const Tensors& grads, int64_t step,
                                                 const F::Sharding&)>;
using GradsFn = std::function<Tensors(const Tensors& params, int64_t step)>;

struct Algorithm {
  Algorithm(const char* name, int state_lists, GradsFn grads)
      : name(name), state_lists(state_lists), grads(std::move(grads)) {}
  const char* name;
  int state_lists;
  StepFn step;
  GradsFn grads;
  // State before the first step; default: zeros of each parameter's shape and dtype.
  std::function<void(Replica&)> init;
  // Host state before the first step (TAdam's moment weights), one per parameter.
  double host_init = 0.0;
  bool has_host = false;
};

// Each tensor of the group: its shape and where it splits (rank 0 holds the
// first `split` elements of the flattened tensor, rank 1 the rest).
struct Piece {
  std::vector<int64_t> shape;
  int64_t split;
};
const std::vector<Piece> kPieces = {
    {{3, 5}, 7},          // uneven
    {{6}, 0},             // rank 0's shard is empty
    {{1}, 1},             // one element; rank 1's shard is empty
    {{2, 3, 2}, 5},       // uneven
    {{}, 0},              // 0-d; rank 0's shard is empty
    {{40000}, 13001},     // several of the kernels' chunks, vector tails
};

enum class Dtypes { Double, Float, Mixed };
at::ScalarType dtype_of(Dtypes dtypes, size_t index) {
  switch (dtypes) {
    case Dtypes::Double: return at::kDouble;
    case Dtypes::Float: return at::kFloat;
    default: return index % 2 == 0 ? at::kDouble : at::kFloat;
  }
}
const char* name_of(Dtypes dtypes) {
  switch (dtypes) {
    case Dtypes::Double: return "float64";
    case Dtypes::Float: return "float32";
    default: return "mixed";
  }
}

// |a - b| <= rtol |b| + atol: float64 to ~1e-12; float32 to a few ulps of
// values near 1 (the whole-tensor sums, in double, differ in their last bits
// between the two orders of summation, which may move a float32 result by
// one ulp a step).
struct Tolerance {
  double rtol, atol;
};
Tolerance tolerance(at::ScalarType dtype) {
  return dtype == at::kDouble ? Tolerance{1e-12, 1e-14} : Tolerance{1e-5, 1e-6};
}

// The largest |a - b| / (rtol |b| + atol): <= 1 where everything agrees.
double excess(const at::Tensor& actual, const at::Tensor& expected, Tolerance tol) {
  const auto a = actual.to(at::kDouble).reshape({-1});
  const auto b = expected.to(at::kDouble).reshape({-1});
  TORCH_CHECK(a.numel() == b.numel(), "sizes differ");
  if (a.numel() == 0) return 0.0;
  const auto ratio = (a - b).abs() / (b.abs() * tol.rtol + tol.atol);
  // A NaN anywhere counts as a mismatch.
  if (ratio.isnan().any().item<bool>()) return INFINITY;
  return ratio.max().item<double>();
}

at::Tensor shard_of(const at::Tensor& whole, int64_t split, int rank) {
  const auto flat = whole.reshape({-1});
  return (rank == 0 ? flat.narrow(0, 0, split) : flat.narrow(0, split, flat.numel() - split)).clone();
}

std::vector<at::Tensor> shards_of(const Tensors& whole, int rank) {
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < whole.size(); ++i) out.push_back(shard_of(whole[i], kPieces[i].split, rank));
  return out;
}

Replica make_whole(const Algorithm& algorithm, Dtypes dtypes) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  Replica whole;
  whole.lists.resize(1 + algorithm.state_lists);
  for (size_t i = 0; i < kPieces.size(); ++i) {
    const auto dtype = dtype_of(dtypes, i);
    auto p = (at::randn(kPieces[i].shape, gen, at::kDouble) + 0.5).to(dtype);
    whole.lists[0].push_back(p);
    for (int j = 1; j <= algorithm.state_lists; ++j) whole.lists[j].push_back(at::zeros_like(p));
  }
  if (algorithm.init) algorithm.init(whole);
  if (algorithm.has_host) whole.host.assign(kPieces.size(), algorithm.host_init);
  return whole;
}

Replica shard_replica(const Replica& whole, int rank) {
  Replica shard;
  for (const auto& list : whole.lists) shard.lists.push_back(shards_of(list, rank));
  shard.host = whole.host;
  shard.rank = rank;
  return shard;
}

std::vector<int64_t> whole_numels() {
  std::vector<int64_t> numels;
  for (const auto& piece : kPieces) {
    int64_t n = 1;
    for (auto d : piece.shape) n *= d;
    numels.push_back(n);
  }
  return numels;
}

// Random gradients with a share of the parameter, drawn from the whole
// parameters (so both runs see the same ones).
Tensors random_grads(const Tensors& params, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + static_cast<uint64_t>(step));
  Tensors grads;
  for (const auto& p : params) {
    grads.push_back((at::randn(p.sizes(), gen, at::kDouble) + p.to(at::kDouble) * 0.3).to(p.scalar_type()));
  }
  return grads;
}

enum class Reduce {
  Sum,      // the exchange: what a process group's all-reduce does
  Nothing,  // the callback leaves the partial sums as they are (control)
  NoNumels  // the exchange, but `numels` left out (control)
};

// Runs `steps` steps of `algorithm` on the whole group and on two shards of
// it; returns the largest excess of the concatenated shards (every list, the
// returned numbers, the host state) over the whole run's, over all steps.
// Both ranks must return the same numbers and call the all-reduce once a step.
double sharded_vs_whole(const Algorithm& algorithm, Dtypes dtypes, int64_t steps,
                        Reduce reduce = Reduce::Sum) {
  Replica whole = make_whole(algorithm, dtypes);
  std::array<Replica, 2> ranks = {shard_replica(whole, 0), shard_replica(whole, 1)};
  TwoRankExchange exchange;
  const auto numels = whole_numels();
  double worst = 0.0;
  auto note = [&](double value) { worst = std::max(worst, value); };

  for (int64_t step = 1; step <= steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const auto grads = algorithm.grads(whole.lists[0], step);
    const std::array<Tensors, 2> grad_shards = {shards_of(grads, 0), shards_of(grads, 1)};
    whole.returned = algorithm.step(whole, grads, step, F::Sharding{});
    run_two_ranks([&](int rank) {
      F::Sharding sharding;
      if (reduce == Reduce::Nothing) {
        sharding.all_reduce = [](at::Tensor&) {};
      } else {
        sharding.all_reduce = [&exchange, rank](at::Tensor& sums) { exchange.all_reduce(rank, sums); };
      }
      if (reduce != Reduce::NoNumels) sharding.numels = numels;
      ranks[rank].returned = algorithm.step(ranks[rank], grad_shards[rank], step, sharding);
    });
    if (reduce != Reduce::Nothing) {
      EXPECT_EQ(exchange.calls(0), step) << "rank 0: one all-reduce per step";
      EXPECT_EQ(exchange.calls(1), step) << "rank 1: one all-reduce per step";
    }

    for (size_t j = 0; j < whole.lists.size(); ++j) {
      for (size_t i = 0; i < kPieces.size(); ++i) {
        const auto joined = at::cat({ranks[0].lists[j][i], ranks[1].lists[j][i]});
        const double e = excess(joined, whole.lists[j][i], tolerance(whole.lists[0][i].scalar_type()));
        if (reduce == Reduce::Sum) {
          EXPECT_LE(e, 1.0) << algorithm.name << ": list " << j << ", tensor " << i;
        }
        note(e);
      }
    }
    // Host numbers (trust ratios, moment weights, coherence): the same bits on
    // both ranks, and the whole run's.
    auto compare_numbers = [&](const std::vector<double>& r0, const std::vector<double>& r1,
                               const std::vector<double>& expected, const char* what) {
      if (reduce == Reduce::Sum) {
        EXPECT_EQ(r0, r1) << algorithm.name << ": the ranks' " << what << " differ";
      }
      ASSERT_EQ(r0.size(), expected.size()) << what;
      for (size_t i = 0; i < expected.size(); ++i) {
        // One number per tensor, or one for the group (Scout's coherence).
        const auto dtype = expected.size() == kPieces.size() ? whole.lists[0][i].scalar_type()
                           : dtypes == Dtypes::Double     ? at::kDouble
                                                          : at::kFloat;
        const auto tol = tolerance(dtype);
        const double e = std::abs(r0[i] - expected[i]) / (std::abs(expected[i]) * tol.rtol + tol.atol);
        if (reduce == Reduce::Sum) {
          EXPECT_LE(e, 1.0) << algorithm.name << ": " << what << "[" << i << "] = " << r0[i]
                            << ", whole: " << expected[i];
        }
        note(std::isnan(e) ? INFINITY : e);
      }
    };
    compare_numbers(ranks[0].returned, ranks[1].returned, whole.returned, "returned values");
    compare_numbers(ranks[0].host, ranks[1].host, whole.host, "host state");
  }
  return worst;
}

// ---- The algorithms ----------------------------------------------------------

std::vector<int64_t> steps_of(const Replica& r, int64_t step) {
  return std::vector<int64_t>(r.lists[0].size(), step);
}

// c10::ArrayRef<bool> needs contiguous bools, which std::vector<bool> is not.
class Flags {
 public:
  Flags(size_t n, bool value) : data_(new bool[n]), size_(n) { std::fill_n(data_.get(), n, value); }
  operator c10::ArrayRef<bool>() const { return c10::ArrayRef<bool>(data_.get(), size_); }

 private:
  std::unique_ptr<bool[]> data_;
  size_t size_;
};

Algorithm lars() {
  Algorithm a("LARS", 1, random_grads);
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    const F::LarsHyper h{0.05, 0.9, 0.0, 1e-3, true, std::nullopt};
    return F::lars_(r.lists[0], g, r.lists[1], Flags(g.size(), step == 1), h, {}, sharding);
  };
  return a;
}

Algorithm lars_with_clip() {
  Algorithm a = lars();
  a.name = "LARS(scale_clip)";
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    const F::LarsHyper h{0.05, 0.9, 0.1, 1e-3, false, F::ScaleClip{0.5, 3.0}};
    return F::lars_(r.lists[0], g, r.lists[1], Flags(g.size(), step == 1), h, {}, sharding);
  };
  return a;
}

Algorithm lamb() {
  Algorithm a("LAMB", 2, random_grads);
  a.step = [](Replica& r, const Tensors& g, int64_t, const F::Sharding& sharding) {
    const F::LambHyper h{1e-2, 0.9, 0.999, 1e-8, 1e-2, {0.0, 10.0}};
    return F::lamb_(r.lists[0], g, r.lists[1], r.lists[2], h, {}, sharding);
  };
  return a;
}

// beta2 = 0.99: the first four steps take the momentum (SMA <= 4), the later
// ones the rectified step.
Algorithm ralars() {
  Algorithm a("RaLars", 2, random_grads);
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    const F::RaLarsHyper h{1e-2, 0.9, 0.99, 1e-8, 1e-2, false, {0.0, 10.0}};
    return F::ralars_(r.lists[0], g, r.lists[1], r.lists[2], steps_of(r, step), h, {}, sharding);
  };
  return a;
}

// dof left to each tensor's size: the whole tensor's, from `numels`.
Algorithm tadam() {
  Algorithm a("TAdam", 3, random_grads);
  a.has_host = true;
  a.host_init = 0.9 / (1.0 - 0.9);
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    const F::TAdamHyper h{1e-2, 0.9, 0.999, 1e-8, 1e-2, true, std::nullopt};
    F::tadam_(r.lists[0], g, r.lists[1], r.lists[2], r.lists[3], r.host, steps_of(r, step), h, {},
              sharding);
    return std::vector<double>{};
  };
  return a;
}

constexpr double kAdamPDelta = 0.1;
// The cosine of each tensor's gradient with its parameter (the one-element
// tensors' can only be +-1): 0 is projected, 0.9 and 1 are not, and 0.035 is
// not for the whole {2, 3, 2} tensor (threshold 0.1 / sqrt(12) = 0.029) but
// would be for either shard of it taken as a whole tensor (0.1 / sqrt(5) and
// 0.1 / sqrt(7)): AdamP needs `numels`.
const std::vector<double> kAdamPCosines = {0.9, 0.0, 1.0, 0.035, -1.0, 0.0};

// AdamP's gradients: at the angle above with the current parameter.
Tensors adamp_grads(const Tensors& params, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(300 + static_cast<uint64_t>(step));
  Tensors grads;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto p = params[i].to(at::kDouble);
    const double cosine = kAdamPCosines[i];
    at::Tensor g;
    if (p.numel() == 1) {
      g = p * cosine;
    } else {
      const auto along = p / p.norm();
      auto across = at::randn(p.sizes(), gen, at::kDouble);
      across -= along * (across * along).sum();
      across /= across.norm();
      g = (along * cosine + across * std::sqrt(1.0 - cosine * cosine)) * 2.0;
    }
    grads.push_back(g.to(params[i].scalar_type()));
  }
  return grads;
}

Algorithm adamp() {
  Algorithm a("AdamP", 2, adamp_grads);
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    const F::AdamPHyper h{1e-2, 0.9, 0.999, 1e-8, 0.0, false, kAdamPDelta};
    F::adamp_(r.lists[0], g, r.lists[1], r.lists[2], {}, steps_of(r, step), h, {}, sharding);
    return std::vector<double>{};
  };
  return a;
}

// timm's AdamP (channel_projection): tensor 0's rows are each orthogonal to their gradient (every
// channel is projected), tensor 3's rows are not but the whole tensor is (it is projected as a
// layer); both are cut mid-row between the ranks. The other tensors have one dimension, which
// this projection leaves alone.
Tensors adamp_channel_grads(const Tensors& params, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(500 + static_cast<uint64_t>(step));
  Tensors grads;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto p = params[i].to(at::kDouble);
    auto g = at::randn(p.sizes(), gen, at::kDouble);
    if (i == 0 || i == 3) {
      const auto rows = p.reshape({p.size(0), -1});
      auto across = g.reshape({p.size(0), -1});
      const auto along = rows / rows.norm(2, {1}, true);
      across -= along * (across * along).sum(1, true);
      across /= across.norm(2, {1}, true);
      if (i == 3) {
        // Radial parts a_r with sum_r a_r ||p_r|| = 0: the layer's cosine is 0, each row's is not.
        const auto norms = rows.norm(2, {1});
        auto radial = at::full({p.size(0)}, 0.5, at::kDouble);
        radial[p.size(0) - 1] = 0.0;
        radial[p.size(0) - 1] = -(radial * norms).sum() / norms[p.size(0) - 1];
        across += along * radial.unsqueeze(1);
      }
    }
    grads.push_back(g.to(params[i].scalar_type()));
  }
  return grads;
}

// Where rank r's elements lie among each tensor's channels (flat shards, as DeepSpeed's).
std::vector<F::Sharding::ChannelLayout> channel_layouts_of(int rank) {
  std::vector<F::Sharding::ChannelLayout> layouts;
  for (const auto& piece : kPieces) {
    if (piece.shape.size() < 2) {
      layouts.emplace_back();
      continue;
    }
    int64_t numel = 1;
    for (auto d : piece.shape) numel *= d;
    layouts.push_back({.channels = piece.shape[0], .first = rank == 0 ? 0 : piece.split,
                       .width = numel / piece.shape[0]});
  }
  return layouts;
}

Algorithm adamp_channels() {
  Algorithm a("AdamP (channel_projection)", 2, adamp_channel_grads);
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    const F::AdamPHyper h{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.05,
                          .amsgrad = false, .delta = kAdamPDelta, .decoupled_weight_decay = true, .nesterov = true,
                          .wd_ratio = 0.1, .channel_projection = true, .caution = false};
    auto with_layouts = sharding;
    if (r.rank >= 0 && !sharding.numels.empty()) with_layouts.channel_layouts = channel_layouts_of(r.rank);
    F::adamp_(r.lists[0], g, r.lists[1], r.lists[2], {}, steps_of(r, step), h, {}, with_layouts);
    return std::vector<double>{};
  };
  return a;
}

// Scout: lists prev, mean, m2, max, min. A step moves the parameters by the
// gradient, folds the change into the statistics, and returns the coherence.
Algorithm scout() {
  Algorithm a("Scout", 5, random_grads);
  a.init = [](Replica& r) {
    for (size_t i = 0; i < r.lists[0].size(); ++i) r.lists[1][i] = r.lists[0][i].clone();
  };
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    for (size_t i = 0; i < g.size(); ++i) r.lists[0][i].add_(g[i], 1e-2);
    const F::ScoutStats stats{r.lists[1], r.lists[2], r.lists[3], r.lists[4], r.lists[5]};
    F::scout_accumulate_(r.lists[0], stats, step - 1);
    return std::vector<double>{F::scout_coherence(stats, step, sharding)};
  };
  return a;
}

// One intra-op thread per rank: two OpenMP teams spin-waiting against each
// other on a 2-core machine make a step a hundred times slower. The sums do
// not depend on the thread count (test_kernels, test_threads).
class Sharding : public ::testing::Test {
 protected:
  void SetUp() override {
    threads_ = at::get_num_threads();
    at::set_num_threads(1);
  }
  void TearDown() override { at::set_num_threads(threads_); }

 private:
  int threads_ = 1;
};

constexpr int64_t kSteps = 6;

void expect_shards_equal_whole(const Algorithm& algorithm) {
  for (const char* backend : kBackends) {
    Backend scope(backend);
    for (auto dtypes : {Dtypes::Double, Dtypes::Float, Dtypes::Mixed}) {
      SCOPED_TRACE(std::string(algorithm.name) + ", backend " + backend + ", " + name_of(dtypes));
      sharded_vs_whole(algorithm, dtypes, kSteps);
    }
  }
}

// Without the all-reduce (the callback leaves the partial sums), the shards
// must drift far from the whole run: the comparisons above would catch it.
void expect_skipped_all_reduce_differs(const Algorithm& algorithm, Reduce reduce = Reduce::Nothing) {
  for (const char* backend : kBackends) {
    Backend scope(backend);
    SCOPED_TRACE(std::string(algorithm.name) + ", backend " + backend);
    EXPECT_GT(sharded_vs_whole(algorithm, Dtypes::Double, kSteps, reduce), 1e3);
  }
}

TEST_F(Sharding, LarsShardsEqualWhole) { expect_shards_equal_whole(lars()); }
TEST_F(Sharding, LarsWithScaleClipShardsEqualWhole) { expect_shards_equal_whole(lars_with_clip()); }
TEST_F(Sharding, LambShardsEqualWhole) { expect_shards_equal_whole(lamb()); }
TEST_F(Sharding, RaLarsShardsEqualWhole) { expect_shards_equal_whole(ralars()); }
TEST_F(Sharding, TAdamShardsEqualWhole) { expect_shards_equal_whole(tadam()); }
TEST_F(Sharding, AdamPShardsEqualWhole) { expect_shards_equal_whole(adamp()); }
TEST_F(Sharding, ScoutCoherenceShardsEqualWhole) { expect_shards_equal_whole(scout()); }
TEST_F(Sharding, AdamPChannelProjectionShardsEqualWhole) { expect_shards_equal_whole(adamp_channels()); }

TEST_F(Sharding, AdamPChannelGradientsTakeEachBranch) {
  // Tensor 0 is projected channel by channel, tensor 3 as a layer: the case above tests both only
  // if each channel's and the layer's cosines fall where adamp_channel_grads puts them.
  const auto whole = make_whole(adamp_channels(), Dtypes::Double);
  const auto grads = adamp_channel_grads(whole.lists[0], 1);
  auto threshold = [](int64_t numel) { return kAdamPDelta / std::sqrt(static_cast<double>(numel)); };
  auto cosines = [](const at::Tensor& p, const at::Tensor& g) {
    const auto rows = p.reshape({p.size(0), -1}), grad_rows = g.reshape({p.size(0), -1});
    return ((rows * grad_rows).sum(1) / (rows.norm(2, {1}) * grad_rows.norm(2, {1}))).abs();
  };
  const auto& p0 = whole.lists[0][0];
  EXPECT_LT(cosines(p0, grads[0]).max().item<double>(), 1e-12);
  const auto& p3 = whole.lists[0][3];
  EXPECT_GT(cosines(p3, grads[3]).min().item<double>(), 5 * threshold(p3.numel() / p3.size(0)));
  const double layer = (p3 * grads[3]).sum().item<double>() / (p3.norm().item<double>() * grads[3].norm().item<double>());
  EXPECT_LT(std::abs(layer), 1e-12);
}

TEST_F(Sharding, AdamPChannelProjectionWithoutLayoutsIsRefused) {
  const auto whole = make_whole(adamp(), Dtypes::Double);
  Replica shard = shard_replica(whole, 0);
  const F::AdamPHyper h{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0,
                        .amsgrad = false, .delta = kAdamPDelta, .channel_projection = true};
  const auto before = shard.lists[0][0].clone();
  F::Sharding sharding{[](at::Tensor&) {}, whole_numels(), {}};
  EXPECT_THROW(F::adamp_(shard.lists[0], shards_of(adamp_grads(whole.lists[0], 1), 0), shard.lists[1], shard.lists[2],
                         {}, std::vector<int64_t>(kPieces.size(), 1), h, {}, sharding),
               c10::NotImplementedError);
  EXPECT_TRUE(at::equal(before, shard.lists[0][0]));
}

TEST_F(Sharding, AChannelCountThatDoesNotDivideItsTensorIsRefusedOnAnEmptyShardToo) {
  // Rank 0 holds none of tensor 1 (6 elements): it must refuse 4 channels as its peer does, or it
  // would wait in the all-reduce alone.
  const auto whole = make_whole(adamp_channels(), Dtypes::Double);
  Replica shard = shard_replica(whole, 0);
  ASSERT_EQ(shard.lists[0][1].numel(), 0);
  const F::AdamPHyper h{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0,
                        .amsgrad = false, .delta = kAdamPDelta, .channel_projection = true};
  auto layouts = channel_layouts_of(0);
  layouts[1] = {.channels = 4, .first = 0, .width = 1};
  int calls = 0;
  F::Sharding sharding{[&calls](at::Tensor&) { ++calls; }, whole_numels(), layouts};
  EXPECT_THROW(F::adamp_(shard.lists[0], shards_of(adamp_channel_grads(whole.lists[0], 1), 0), shard.lists[1],
                         shard.lists[2], {}, std::vector<int64_t>(kPieces.size(), 1), h, {}, sharding),
               c10::Error);
  EXPECT_EQ(calls, 0);
}

TEST_F(Sharding, AChannelLayoutPastItsTensorIsRefused) {
  const auto whole = make_whole(adamp_channels(), Dtypes::Double);
  Replica shard = shard_replica(whole, 1);
  const F::AdamPHyper h{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0,
                        .amsgrad = false, .delta = kAdamPDelta, .channel_projection = true};
  auto layouts = channel_layouts_of(1);
  layouts[0].first += 1;  // one element off: the last one would lie past the third row
  F::Sharding sharding{[](at::Tensor&) {}, whole_numels(), layouts};
  const auto before = shard.lists[0][0].clone();
  try {
    F::adamp_(shard.lists[0], shards_of(adamp_channel_grads(whole.lists[0], 1), 1), shard.lists[1], shard.lists[2],
              {}, std::vector<int64_t>(kPieces.size(), 1), h, {}, sharding);
    ADD_FAILURE() << "no exception";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("go past its whole tensor's 3 output channels"),
              std::string::npos) << e.what_without_backtrace();
  }
  EXPECT_TRUE(at::equal(before, shard.lists[0][0]));
}

TEST_F(Sharding, TAdamMomentWeightsMoveOnEveryRank) {
  // Tensor 1 has no element on rank 0 and tensor 2 none on rank 1: their
  // weights still advance there, as on the other rank.
  for (const char* backend : kBackends) {
    Backend scope(backend);
    SCOPED_TRACE(backend);
    const auto algorithm = tadam();
    Replica whole = make_whole(algorithm, Dtypes::Double);
    std::array<Replica, 2> ranks = {shard_replica(whole, 0), shard_replica(whole, 1)};
    TwoRankExchange exchange;
    const auto grads = algorithm.grads(whole.lists[0], 1);
    algorithm.step(whole, grads, 1, {});
    run_two_ranks([&](int rank) {
      F::Sharding sharding{[&exchange, rank](at::Tensor& s) { exchange.all_reduce(rank, s); }, whole_numels(), {}};
      algorithm.step(ranks[rank], shards_of(grads, rank), 1, sharding);
    });
    for (size_t i = 0; i < kPieces.size(); ++i) {
      EXPECT_NE(whole.host[i], algorithm.host_init) << "tensor " << i;
      EXPECT_EQ(ranks[0].host[i], ranks[1].host[i]) << "tensor " << i;
      EXPECT_NEAR(ranks[0].host[i], whole.host[i], 1e-12 * std::abs(whole.host[i])) << "tensor " << i;
    }
    ASSERT_EQ(ranks[0].lists[0][1].numel(), 0);
    ASSERT_EQ(ranks[1].lists[0][2].numel(), 0);
  }
}

TEST_F(Sharding, AdamPGradientsProjectSomeTensors) {
  // The AdamP case above tests the projection only if some tensors project
  // and some do not, and MissingNumelsIsCaught only if one is projected when
  // counted as a shard: check the cosines against the thresholds.
  const auto whole = make_whole(adamp(), Dtypes::Double);
  const auto grads = adamp_grads(whole.lists[0], 1);
  auto threshold = [](int64_t numel) { return kAdamPDelta / std::sqrt(static_cast<double>(numel)); };
  int projected = 0, kept = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto p = whole.lists[0][i], g = grads[i];
    const double cosine = (p * g).sum().item<double>() / (p.norm().item<double>() * g.norm().item<double>());
    EXPECT_NEAR(cosine, kAdamPCosines[i], 1e-12) << "tensor " << i;
    // Far from the threshold, so that the two orders of summation agree.
    EXPECT_GT(std::abs(cosine - threshold(p.numel())), 1e-4) << "tensor " << i;
    (cosine < threshold(p.numel()) ? projected : kept) += 1;
  }
  EXPECT_EQ(projected, 3);
  EXPECT_EQ(kept, 3);
  EXPECT_GT(kAdamPCosines[3], threshold(12));
  EXPECT_LT(kAdamPCosines[3], threshold(kPieces[3].split));
  EXPECT_LT(kAdamPCosines[3], threshold(12 - kPieces[3].split));
}

TEST_F(Sharding, SkippedAllReduceIsCaught) {
  for (const auto& algorithm : {lars(), lamb(), ralars(), tadam(), adamp(), scout()}) {
    expect_skipped_all_reduce_differs(algorithm);
  }
}

TEST_F(Sharding, MissingNumelsIsCaught) {
  // TAdam's default dof and weight, and AdamP's threshold, count the whole
  // tensor's elements: without `numels` they count the shard's.
  expect_skipped_all_reduce_differs(tadam(), Reduce::NoNumels);
  expect_skipped_all_reduce_differs(adamp(), Reduce::NoNumels);
}

// ---- Refusals ------------------------------------------------------------------

std::vector<Algorithm> numel_checked_algorithms() {
  return {lars(), lamb(), ralars(), tadam(), adamp()};
}

// A call with these numels throws c10::Error before writing or calling the
// all-reduce.
void expect_refused_unchanged(const Algorithm& algorithm, const std::vector<int64_t>& numels,
                              const std::string& needle) {
  Replica shard = shard_replica(make_whole(algorithm, Dtypes::Double), 0);
  Replica before;
  for (const auto& list : shard.lists) {
    before.lists.emplace_back();
    for (const auto& t : list) before.lists.back().push_back(t.clone());
  }
  before.host = shard.host;
  const auto grads = shards_of(algorithm.grads(make_whole(algorithm, Dtypes::Double).lists[0], 1), 0);
  int calls = 0;
  F::Sharding sharding{[&calls](at::Tensor&) { ++calls; }, numels, {}};
  try {
    algorithm.step(shard, grads, 1, sharding);
    ADD_FAILURE() << algorithm.name << ": no exception";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << algorithm.name << ": " << e.what();
  }
  EXPECT_EQ(calls, 0) << algorithm.name << ": the all-reduce was called";
  for (size_t j = 0; j < shard.lists.size(); ++j) {
    for (size_t i = 0; i < shard.lists[j].size(); ++i) {
      EXPECT_TRUE(at::equal(shard.lists[j][i], before.lists[j][i]))
          << algorithm.name << ": list " << j << ", tensor " << i << " was written";
    }
  }
  EXPECT_EQ(shard.host, before.host) << algorithm.name;
}

TEST_F(Sharding, NumelsOfTheWrongLengthThrowBeforeWriting) {
  for (const char* backend : kBackends) {
    Backend scope(backend);
    SCOPED_TRACE(backend);
    for (const auto& algorithm : numel_checked_algorithms()) {
      auto numels = whole_numels();
      numels.pop_back();
      expect_refused_unchanged(algorithm, numels, "whole-tensor sizes");
      numels = whole_numels();
      numels.push_back(3);
      expect_refused_unchanged(algorithm, numels, "whole-tensor sizes");
    }
  }
}

TEST_F(Sharding, NumelsBelowTheShardThrowBeforeWriting) {
  for (const char* backend : kBackends) {
    Backend scope(backend);
    SCOPED_TRACE(backend);
    for (const auto& algorithm : numel_checked_algorithms()) {
      auto numels = whole_numels();
      numels[0] = kPieces[0].split - 1;  // rank 0 holds `split` elements of tensor 0
      expect_refused_unchanged(algorithm, numels, "more than its whole tensor's");
    }
  }
}

TEST_F(Sharding, AllReduceThatChangesTheShapeThrows) {
  const std::vector<std::pair<const char*, std::function<void(at::Tensor&)>>> reshapers = {
      {"flattened", [](at::Tensor& s) { s = s.reshape({-1}); }},
      {"one row more", [](at::Tensor& s) { s = at::zeros({s.size(0) + 1, s.size(1)}, s.options()); }},
      {"one column less", [](at::Tensor& s) { s = s.narrow(1, 0, s.size(1) - 1); }},
      {"undefined", [](at::Tensor& s) { s = at::Tensor(); }},
  };
  for (const char* backend : kBackends) {
    Backend scope(backend);
    for (const auto& algorithm : {lars(), lamb(), ralars(), tadam(), adamp(), scout()}) {
      for (const auto& [what, reshape] : reshapers) {
        SCOPED_TRACE(std::string(algorithm.name) + ", " + backend + ", " + what);
        Replica shard = shard_replica(make_whole(algorithm, Dtypes::Double), 1);
        const auto grads = shards_of(algorithm.grads(make_whole(algorithm, Dtypes::Double).lists[0], 1), 1);
        F::Sharding sharding{reshape, whole_numels(), {}};
        try {
          algorithm.step(shard, grads, 1, sharding);
          ADD_FAILURE() << "no exception";
        } catch (const c10::Error& e) {
          EXPECT_NE(std::string(e.what()).find("must keep their shape"), std::string::npos) << e.what();
        }
      }
    }
  }
}

// ---- One sweep per small tensor ---------------------------------------------

// Whole tensors take the two passes of LARS, LAMB, RaLars, TAdam and AdamP in one sweep per
// tensor of one chunk (kernels::cpu::run_pair), sharded ones in turn around the all-reduce. An
// all-reduce that leaves the sums as they are makes a whole group take the second way: both must
// give the same bits, on groups mixing empty, one-chunk and several-chunk tensors, on one thread
// and two.
Algorithm lamb_cautious() {
  Algorithm a("LAMB(caution)", 2, random_grads);
  a.step = [](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    F::LambHyper h{1e-2, 0.9, 0.999, 1e-8, 1e-2, {0.0, 10.0}};
    h.bias_correction = true;
    h.caution = true;
    return F::lamb_(r.lists[0], g, r.lists[1], r.lists[2], steps_of(r, step), h, {}, sharding);
  };
  return a;
}

// AdamP on mixed_sizes: every other tensor's gradient orthogonal to its parameter (projected), the
// others' not (kept), with a decoupled decay; with Nesterov the update reads the gradient again
// (AdamPApplyReadingGrad), and with channel_projection the 1-dimensional tensors are all kept.
Tensors adamp_mixed_grads(const Tensors& params, int64_t step) {
  auto grads = random_grads(params, step);
  for (size_t i = 0; i < params.size(); i += 2) {
    if (params[i].numel() < 2) continue;
    const auto p = params[i].to(at::kDouble), g = grads[i].to(at::kDouble);
    grads[i] = (g - p * ((p * g).sum() / (p * p).sum())).to(params[i].scalar_type());
  }
  return grads;
}

Algorithm adamp_mixed(const char* name, bool nesterov, bool channel_projection, double delta = 0.1) {
  Algorithm a(name, 2, adamp_mixed_grads);
  a.step = [=](Replica& r, const Tensors& g, int64_t step, const F::Sharding& sharding) {
    const F::AdamPHyper h{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.05,
                          .amsgrad = false, .delta = delta, .decoupled_weight_decay = true, .nesterov = nesterov,
                          .wd_ratio = 1.0, .channel_projection = channel_projection, .caution = false};
    auto with_layouts = sharding;
    if (channel_projection && sharding.all_reduce) {
      // A sharded call says where its elements lie among the channels: here, of no channels.
      for (const auto& p : r.lists[0]) with_layouts.numels.push_back(p.numel());
      with_layouts.channel_layouts.resize(r.lists[0].size());
    }
    F::adamp_(r.lists[0], g, r.lists[1], r.lists[2], {}, steps_of(r, step), h, {}, with_layouts);
    return std::vector<double>{};
  };
  return a;
}

Replica mixed_sizes(const Algorithm& algorithm, at::ScalarType dtype) {
  // 16384 elements is one chunk (kernels/cpu/pass.h kChunk); 40000 is three.
  const std::vector<int64_t> sizes = {0, 1, 100, 16384, 16385, 40000, 7, 2048, 0, 513, 40000, 3};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  Replica group;
  group.lists.resize(1 + algorithm.state_lists);
  for (int64_t n : sizes) {
    auto p = (at::randn({n}, gen, at::kDouble) + 0.5).to(dtype);
    group.lists[0].push_back(p);
    for (int j = 1; j <= algorithm.state_lists; ++j) group.lists[j].push_back(at::zeros_like(p));
  }
  if (algorithm.init) algorithm.init(group);
  if (algorithm.has_host) group.host.assign(sizes.size(), algorithm.host_init);
  return group;
}

TEST_F(Sharding, OneSweepPerSmallTensorGivesTheBitsOfTwoPasses) {
  const int threads = at::get_num_threads();
  for (const auto& algorithm :
       {lars(), lars_with_clip(), lamb(), lamb_cautious(), ralars(), tadam(), adamp_mixed("AdamP", false, false),
        adamp_mixed("AdamP(nesterov)", true, false), adamp_mixed("AdamP(channel_projection)", false, true)}) {
    for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
      for (const int thread_count : {1, 2}) {
        SCOPED_TRACE(std::string(algorithm.name) + ", " + c10::toString(dtype) + ", " +
                     std::to_string(thread_count) + " threads");
        at::set_num_threads(thread_count);
        Replica swept = mixed_sizes(algorithm, dtype), passes = mixed_sizes(algorithm, dtype);
        F::Sharding in_turn;
        in_turn.all_reduce = [](at::Tensor&) {};
        for (int64_t step = 1; step <= 4; ++step) {
          const auto grads = algorithm.grads(swept.lists[0], step);
          swept.returned = algorithm.step(swept, grads, step, F::Sharding{});
          passes.returned = algorithm.step(passes, grads, step, in_turn);
          for (size_t j = 0; j < swept.lists.size(); ++j) {
            for (size_t i = 0; i < swept.lists[j].size(); ++i) {
              EXPECT_TRUE(at::equal(swept.lists[j][i], passes.lists[j][i]))
                  << "step " << step << ", list " << j << ", tensor " << i;
            }
          }
          EXPECT_EQ(swept.returned, passes.returned) << "step " << step;
          EXPECT_EQ(swept.host, passes.host) << "step " << step;
        }
        // The steps moved the parameters of one chunk and of three (a group left as it was would
        // compare equal too; TAdam's steps are below a bfloat16 ulp on most elements).
        EXPECT_FALSE(at::equal(swept.lists[0][7], mixed_sizes(algorithm, dtype).lists[0][7]));
        EXPECT_FALSE(at::equal(swept.lists[0][5], mixed_sizes(algorithm, dtype).lists[0][5]));
      }
    }
  }
  at::set_num_threads(threads);
}

TEST_F(Sharding, AdamPMixedSizesProjectEveryOtherTensor) {
  // The test above compares two fused paths with each other; this one checks that their AdamP
  // steps project where adamp_mixed_grads says: against a threshold that no cosine passes, the
  // orthogonal tensors step differently, the others the same.
  const auto projecting = adamp_mixed("AdamP", false, false);
  const auto keeping = adamp_mixed("AdamP (delta=-1e9)", false, false, -1e9);
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    SCOPED_TRACE(c10::toString(dtype));
    Replica projected = mixed_sizes(projecting, dtype), kept = mixed_sizes(keeping, dtype);
    const auto grads = projecting.grads(projected.lists[0], 1);
    projecting.step(projected, grads, 1, {});
    keeping.step(kept, grads, 1, {});
    for (size_t i = 0; i < grads.size(); ++i) {
      const int64_t numel = grads[i].numel();
      if (i % 2 == 0 && numel >= 2) {
        EXPECT_FALSE(at::equal(projected.lists[0][i], kept.lists[0][i])) << "tensor " << i << " was not projected";
      } else if (i % 2 == 1 && numel >= 100) {
        EXPECT_TRUE(at::equal(projected.lists[0][i], kept.lists[0][i])) << "tensor " << i << " was projected";
      }
    }
  }
}

}  // namespace
}  // namespace holocron_test
