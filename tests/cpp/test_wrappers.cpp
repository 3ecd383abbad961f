// Lookahead and Scout around torch::optim::Adam and around holocron optimizers.

#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/optim/schedulers/step_lr.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace holocron_test {
namespace {

using BaseFactory =
    std::function<std::shared_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

std::shared_ptr<torch::optim::Optimizer> make_adam(std::vector<torch::Tensor> params) {
  return std::make_shared<torch::optim::Adam>(std::move(params), torch::optim::AdamOptions(0.1));
}
std::shared_ptr<torch::optim::Optimizer> make_lamb(std::vector<torch::Tensor> params) {
  return std::make_shared<ho::LAMB>(std::move(params), ho::LAMBOptions(0.1).weight_decay(1e-2));
}
std::shared_ptr<torch::optim::Optimizer> make_adabelief(std::vector<torch::Tensor> params) {
  return std::make_shared<ho::AdaBelief>(std::move(params), ho::AdaBeliefOptions(0.05).amsgrad(true));
}

struct Fixture {
  std::vector<torch::Tensor> params;  // the wrapped ones
  std::vector<torch::Tensor> mirror;  // for a plain base optimizer
  std::vector<std::vector<torch::Tensor>> grads;

  Fixture(int steps, uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    params = {at::randn({3, 4}, gen, torch::kDouble), at::randn({5}, gen, torch::kDouble)};
    for (auto& p : params) {
      mirror.push_back(p.clone().set_requires_grad(true));
      p.set_requires_grad(true);
    }
    for (int k = 0; k < steps; ++k) {
      auto& g = grads.emplace_back();
      for (const auto& p : params) {
        g.push_back(at::randn(p.sizes(), gen, torch::kDouble).mul_(1.0 + 0.5 * (k % 3)));
      }
    }
  }
  void set_grads(int k, const std::vector<torch::Tensor>& ps) const {
    for (size_t i = 0; i < ps.size(); ++i) ps[i].mutable_grad() = grads[k][i].clone();
  }
};

std::vector<torch::Tensor> clones(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().clone());
  return out;
}

// ---- Lookahead math ---------------------------------------------------------

void lookahead_math(const BaseFactory& make_base) {
  constexpr int kPeriod = 3;
  constexpr double kRate = 0.4;
  Fixture f(2 * kPeriod, 21);
  auto base = make_base(f.params);
  ho::Lookahead la(base, ho::LookaheadOptions().sync_rate(kRate).sync_period(kPeriod));
  auto plain = make_base(f.mirror);
  auto slow = clones(f.params);
  for (int period = 0; period < 2; ++period) {
    for (int j = 0; j < kPeriod; ++j) {
      const int k = period * kPeriod + j;
      f.set_grads(k, f.params);
      f.set_grads(k, f.mirror);
      la.step();
      plain->step();
      EXPECT_EQ(la.fast_steps(), k + 1);
      if (j + 1 < kPeriod) {
        // Between syncs the fast weights are the base's.
        EXPECT_TRUE(all_equal(f.params, f.mirror)) << "step " << k;
        for (size_t i = 0; i < slow.size(); ++i) {
          EXPECT_TRUE(torch::equal(la.slow_params()[0][i], slow[i])) << "step " << k;
        }
      }
    }
    // At the sync: slow += rate * (fast - slow); fast = slow.
    for (size_t i = 0; i < slow.size(); ++i) {
      std::vector<double> expected = to_vec(slow[i]);
      const auto fast = to_vec(f.mirror[i]);
      for (size_t e = 0; e < expected.size(); ++e) expected[e] += kRate * (fast[e] - expected[e]);
      expect_close(f.params[i], expected, "fast after sync " + std::to_string(period), 1e-12);
      EXPECT_TRUE(torch::equal(f.params[i], la.slow_params()[0][i]));
      // The plain run continues from the synced weights (its own state kept).
      torch::NoGradGuard no_grad;
      f.mirror[i].copy_(f.params[i]);
      slow[i] = f.params[i].detach().clone();
    }
  }
}

TEST(Lookahead, MathAroundTorchAdam) { lookahead_math(make_adam); }

// timm's Lookahead: slow weights taken at a parameter's first sync (which moves nothing), syncs
// skipping the parameters without a gradient, a group added later counting from then.
TEST(Lookahead, SlowFromFirstSyncIsTimms) {
  constexpr int kPeriod = 2;
  constexpr double kRate = 0.3;
  Fixture f(3 * kPeriod, 23);
  ho::Lookahead la(make_lamb({f.params[0]}),
                   ho::LookaheadOptions().sync_rate(kRate).sync_period(kPeriod).slow_from_first_sync(true));
  auto plain = make_lamb({f.mirror[0]});
  EXPECT_FALSE(la.slow_params()[0][0].defined());
  const auto step_both = [&](int k) {
    f.set_grads(k, f.params);
    f.set_grads(k, f.mirror);
    la.step();
    plain->step();
  };
  step_both(0);
  la.add_param_group(torch::optim::OptimizerParamGroup({f.params[1]}));
  plain->add_param_group(torch::optim::OptimizerParamGroup({f.mirror[1]}));
  step_both(1);  // group 0's first sync: nothing moves, its slow weights are taken
  EXPECT_TRUE(all_equal(f.params, f.mirror));
  EXPECT_TRUE(torch::equal(la.slow_params()[0][0], f.params[0]));
  EXPECT_FALSE(la.slow_params()[1][0].defined());
  step_both(2);  // group 1's first sync (its second step)
  EXPECT_TRUE(all_equal(f.params, f.mirror));
  EXPECT_TRUE(torch::equal(la.slow_params()[1][0], f.params[1]));
  const auto slow0 = la.slow_params()[0][0].clone();
  step_both(3);  // group 0 syncs: pulled back
  std::vector<double> expected = to_vec(slow0);
  const auto fast = to_vec(f.mirror[0]);
  for (size_t e = 0; e < expected.size(); ++e) expected[e] += kRate * (fast[e] - expected[e]);
  expect_close(f.params[0], expected, "group 0 at its second sync", 1e-12);
  EXPECT_TRUE(torch::equal(f.params[1], f.mirror[1]));
  // Group 1's next sync, with no gradient: neither moved nor taken again.
  const auto slow1 = la.slow_params()[1][0].clone();
  f.params[1].mutable_grad() = torch::Tensor();
  f.params[0].mutable_grad() = f.grads[4][0].clone();
  la.step();
  EXPECT_TRUE(torch::equal(la.slow_params()[1][0], slow1));
}

TEST(Lookahead, SlowFromFirstSyncCheckpointResumes) {
  constexpr int kSteps = 7;
  const auto options = ho::LookaheadOptions().sync_rate(0.4).sync_period(4).slow_from_first_sync(true);
  Fixture full(kSteps, 29), first(kSteps, 29);
  ho::Lookahead full_opt(make_adabelief(full.params), options);
  for (int k = 0; k < kSteps; ++k) {
    full.set_grads(k, full.params);
    full_opt.step();
  }
  ho::Lookahead first_opt(make_adabelief(first.params), options);
  for (int k = 0; k < 3; ++k) {  // before the first sync: no slow weights yet
    first.set_grads(k, first.params);
    first_opt.step();
  }
  std::stringstream stream;
  torch::save(first_opt, stream);
  {
    // Version 2: a build that reads only version 1 refuses what it would step otherwise.
    std::stringstream copy(stream.str());
    torch::serialize::InputArchive archive;
    archive.load_from(copy);
    c10::IValue version;
    ASSERT_TRUE(archive.try_read("holocron/format_version", version));
    EXPECT_EQ(version.toInt(), 2);
  }
  auto resumed_params = clones(first.params);
  for (auto& p : resumed_params) p.set_requires_grad(true);
  ho::Lookahead resumed(make_adabelief(resumed_params), ho::LookaheadOptions());
  torch::load(resumed, stream);
  EXPECT_TRUE(resumed.options().slow_from_first_sync());
  EXPECT_FALSE(resumed.slow_params()[0][0].defined());
  for (int k = 3; k < kSteps; ++k) {
    first.set_grads(k, resumed_params);
    resumed.step();
  }
  EXPECT_TRUE(all_equal(full.params, resumed_params));
  EXPECT_TRUE(torch::equal(full_opt.slow_params()[0][1], resumed.slow_params()[0][1]));
}

TEST(Scout, RefusesSlowFromFirstSync) {
  Fixture f(1, 1);
  EXPECT_THROW(ho::Scout(make_lamb(f.params), ho::LookaheadOptions().slow_from_first_sync(true)),
               std::invalid_argument);
}
TEST(Lookahead, BadSyncOptionsAreNamedWithTheirValues) {
  Fixture f(1, 1);
  expect_throw_naming([&] { ho::Lookahead(make_lamb(f.params), ho::LookaheadOptions().sync_rate(-0.1)); },
                      "sync_rate must be in [0, 1], got -0.1", "a negative sync_rate");
  expect_throw_naming([&] { ho::Scout(make_lamb(f.params), ho::LookaheadOptions().sync_period(0)); },
                      "sync_period must be an integer >= 1, got 0", "sync_period 0");
}

TEST(Lookahead, MathAroundLAMB) { lookahead_math(make_lamb); }

TEST(Lookahead, RateZeroAndOne) {
  // sync_rate 0 resets the fast weights to the initial ones; 1 keeps them.
  for (double rate : {0.0, 1.0}) {
    Fixture f(2, 22);
    const auto initial = clones(f.params);
    ho::Lookahead la(make_lamb(f.params), ho::LookaheadOptions().sync_rate(rate).sync_period(2));
    auto plain = make_lamb(f.mirror);
    for (int k = 0; k < 2; ++k) {
      f.set_grads(k, f.params);
      f.set_grads(k, f.mirror);
      la.step();
      plain->step();
    }
    EXPECT_TRUE(all_equal(f.params, rate == 0.0 ? initial : clones(f.mirror))) << rate;
  }
}

// ---- Schedulers, zero_grad, closures, groups ------------------------------------

void scheduler_reaches_base(const BaseFactory& make_base) {
  Fixture f(6, 23);
  auto base = make_base(f.params);
  ho::Lookahead la(base, ho::LookaheadOptions().sync_period(100));
  torch::optim::StepLR sched(la, /*step_size=*/2, /*gamma=*/0.5);
  auto plain = make_base(f.mirror);
  torch::optim::StepLR plain_sched(*plain, 2, 0.5);
  const double lr = base->param_groups()[0].options().get_lr();
  for (int k = 0; k < 6; ++k) {
    f.set_grads(k, f.params);
    f.set_grads(k, f.mirror);
    la.step();
    plain->step();
    sched.step();
    plain_sched.step();
  }
  EXPECT_DOUBLE_EQ(base->param_groups()[0].options().get_lr(), lr * 0.25);
  EXPECT_DOUBLE_EQ(la.param_groups()[0].options().get_lr(), lr * 0.25);
  EXPECT_TRUE(all_equal(f.params, f.mirror));
}

TEST(Lookahead, SchedulerReachesTorchAdam) { scheduler_reaches_base(make_adam); }
TEST(Lookahead, SchedulerReachesLAMB) { scheduler_reaches_base(make_lamb); }

TEST(Lookahead, ZeroGradForwards) {
  Fixture f(1, 24);
  ho::Scout scout(make_adam(f.params));
  f.set_grads(0, f.params);
  scout.zero_grad(false);
  for (const auto& p : f.params) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().abs().sum().item<double>(), 0.0);
  }
  scout.zero_grad();
  for (const auto& p : f.params) EXPECT_FALSE(p.grad().defined());
  EXPECT_EQ(scout.base_optimizer().param_groups()[0].params().size(), 2u);
}

// A group added to the base behind the wrapper's back (LibTorch's add_param_group) is mirrored
// only at the next step; zero_grad clears its gradients already, through nested wrappers too.
TEST(Lookahead, ZeroGradClearsAGroupAddedToTheBaseDirectly) {
  for (int kind = 0; kind < 3; ++kind) {
    auto a = torch::randn({3}, torch::kDouble).requires_grad_();
    auto b = torch::randn({2}, torch::kDouble).requires_grad_();
    auto base = make_lamb({a});
    std::unique_ptr<ho::Lookahead> wrapper;
    if (kind == 0) wrapper = std::make_unique<ho::Lookahead>(base);
    if (kind == 1) wrapper = std::make_unique<ho::Scout>(base);
    if (kind == 2) wrapper = std::make_unique<ho::Lookahead>(std::make_shared<ho::Scout>(base));
    base->add_param_group(torch::optim::OptimizerParamGroup({b}));
    a.mutable_grad() = torch::ones_like(a);
    b.mutable_grad() = torch::ones_like(b);
    wrapper->zero_grad(false);
    EXPECT_EQ(b.grad().abs().sum().item<double>(), 0.0) << kind;
    wrapper->zero_grad();
    EXPECT_FALSE(a.grad().defined()) << kind;
    EXPECT_FALSE(b.grad().defined()) << kind;
  }
}

TEST(Lookahead, StepWithClosure) {
  for (const auto& make_base : {BaseFactory(make_adam), BaseFactory(make_lamb)}) {
    auto a = TinyModel::make(25);
    auto b = a.clone();
    ho::Lookahead la_closure(make_base(a.params()), ho::LookaheadOptions().sync_period(2));
    ho::Lookahead la_plain(make_base(b.params()), ho::LookaheadOptions().sync_period(2));
    for (int k = 0; k < 5; ++k) {
      double inner = 0.0;
      torch::Tensor loss;
      {
        torch::NoGradGuard no_grad;
        loss = la_closure.step([&] {
          EXPECT_TRUE(torch::GradMode::is_enabled());
          la_closure.zero_grad();
          auto l = a.loss(k);
          l.backward();
          inner = l.item<double>();
          return l;
        });
      }
      ASSERT_TRUE(loss.defined());
      EXPECT_EQ(loss.item<double>(), inner);
      b.backward(k);
      EXPECT_FALSE(la_plain.step().defined());
    }
    EXPECT_TRUE(all_equal(a.params(), b.params()));
  }
}

TEST(Lookahead, AddParamGroupKeepsOptionsAndTakesSlowCopies) {
  Fixture f(3, 26);
  auto base = std::make_shared<ho::LAMB>(std::vector<torch::Tensor>{f.params[0]},
                                         ho::LAMBOptions(0.1));
  ho::Lookahead la(base, ho::LookaheadOptions().sync_period(2));
  la.add_param_group(OptimizerParamGroup(std::vector<torch::Tensor>{f.params[1]},
                                         std::make_unique<ho::LAMBOptions>(0.02)));
  ASSERT_EQ(base->param_groups().size(), 2u);
  ASSERT_EQ(la.param_groups().size(), 2u);
  EXPECT_EQ(base->param_groups()[1].options().get_lr(), 0.02);
  EXPECT_EQ(la.param_groups()[1].options().get_lr(), 0.02);
  ASSERT_EQ(la.slow_params().size(), 2u);
  EXPECT_TRUE(torch::equal(la.slow_params()[1][0], f.params[1]));
  // The new group is synchronised too: after 2 steps fast == slow.
  for (int k = 0; k < 2; ++k) {
    f.set_grads(k, f.params);
    la.step();
  }
  EXPECT_TRUE(torch::equal(la.slow_params()[1][0], f.params[1]));
  EXPECT_FALSE(torch::equal(f.params[1], f.mirror[1]));
}

// ---- Checkpoints -------------------------------------------------------------

template <typename Wrapper>
void wrapper_checkpoint(const BaseFactory& make_base) {
  constexpr int kSaveAt = 4;  // mid-period (period 3)
  constexpr int kTotal = 10;
  const auto options = ho::LookaheadOptions().sync_rate(0.3).sync_period(3);

  auto full = TinyModel::make(31);
  Wrapper full_opt(make_base(full.params()), options);
  for (int k = 0; k < kTotal; ++k) {
    full.backward(k);
    full_opt.step();
  }

  auto first = TinyModel::make(31);
  Wrapper first_opt(make_base(first.params()), options);
  for (int k = 0; k < kSaveAt; ++k) {
    first.backward(k);
    first_opt.step();
  }
  std::stringstream stream;
  torch::save(first_opt, stream);

  auto resumed = first.clone();
  // Different wrapper options: the checkpoint's win.
  Wrapper resumed_opt(make_base(resumed.params()), ho::LookaheadOptions());
  torch::load(resumed_opt, stream);
  EXPECT_EQ(resumed_opt.fast_steps(), kSaveAt);
  EXPECT_EQ(resumed_opt.options().sync_period(), 3);
  EXPECT_EQ(resumed_opt.options().sync_rate(), 0.3);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::equal(resumed_opt.slow_params()[0][i], first_opt.slow_params()[0][i]));
  }
  for (int k = kSaveAt; k < kTotal; ++k) {
    resumed.backward(k);
    resumed_opt.step();
  }
  EXPECT_TRUE(all_equal(full.params(), resumed.params()));
  EXPECT_EQ(full_opt.fast_steps(), resumed_opt.fast_steps());
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::equal(resumed_opt.slow_params()[0][i], full_opt.slow_params()[0][i]));
  }
  if constexpr (std::is_same_v<Wrapper, ho::Scout>) {
    EXPECT_EQ(full_opt.last_sync_rate(), resumed_opt.last_sync_rate());
  }
}

TEST(Lookahead, CheckpointMidPeriodTorchAdam) { wrapper_checkpoint<ho::Lookahead>(make_adam); }
TEST(Lookahead, CheckpointMidPeriodAdaBelief) {
  wrapper_checkpoint<ho::Lookahead>(make_adabelief);
}
TEST(Scout, CheckpointMidPeriodLAMB) { wrapper_checkpoint<ho::Scout>(make_lamb); }
TEST(Scout, CheckpointMidPeriodTorchAdam) { wrapper_checkpoint<ho::Scout>(make_adam); }

TEST(Lookahead, MismatchedCheckpointChangesNothing) {
  auto a = TinyModel::make(32);
  ho::Scout target(make_lamb(a.params()), ho::ScoutOptions().sync_period(3));
  for (int k = 0; k < 2; ++k) {
    a.backward(k);
    target.step();
  }
  const auto params_before = clones(a.params());
  const auto slow_before = clones(target.slow_params()[0]);
  const auto base_before =
      snapshot<ho::LAMBParamState>(target.base_optimizer());
  auto expect_unchanged = [&](const std::string& what) {
    EXPECT_EQ(target.fast_steps(), 2) << what;
    EXPECT_TRUE(all_equal(a.params(), params_before)) << what;
    EXPECT_TRUE(all_equal(target.slow_params()[0], slow_before)) << what;
    expect_same(base_before, snapshot<ho::LAMBParamState>(target.base_optimizer()), what);
  };
  {
    // A Lookahead checkpoint is not a Scout one.
    auto m = TinyModel::make(32);
    ho::Lookahead other(make_lamb(m.params()));
    m.backward(0);
    other.step();
    std::stringstream stream;
    torch::save(other, stream);
    EXPECT_ANY_THROW(torch::load(target, stream));
    expect_unchanged("Lookahead checkpoint");
  }
  {
    // Same wrapper, but the base is another optimizer kind.
    auto m = TinyModel::make(32);
    ho::Scout other(std::make_shared<ho::Adan>(m.params()));
    m.backward(0);
    other.step();
    std::stringstream stream;
    torch::save(other, stream);
    EXPECT_ANY_THROW(torch::load(target, stream));
    expect_unchanged("other base kind");
  }
  {
    // Different parameter shapes.
    auto bigger = torch::randn({2, 2}, torch::kDouble).set_requires_grad(true);
    auto m = TinyModel::make(32);
    ho::Scout other(make_lamb({m.weight, bigger, m.scale}));
    std::stringstream stream;
    torch::save(other, stream);
    EXPECT_ANY_THROW(torch::load(target, stream));
    expect_unchanged("different shape");
  }
}

// A checkpoint of another floating-point dtype (a float64 run resumed in float32, and back) loads
// as the base's own load converts its state; invalid options in a checkpoint are a c10::Error.
template <typename Wrapper>
void other_dtype_checkpoint() {
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto m = TinyModel::make(40);
    Wrapper saved(make_lamb(m.params()), ho::ScoutOptions().sync_period(3));
    for (int k = 0; k < 2; ++k) {
      m.backward(k);
      saved.step();
    }
    std::stringstream stream;
    torch::save(saved, stream);
    std::vector<torch::Tensor> narrow;
    for (const auto& p : m.params()) narrow.push_back(p.detach().to(dtype).requires_grad_());
    Wrapper loaded(make_lamb(narrow), ho::ScoutOptions().sync_period(3));
    torch::load(loaded, stream);
    EXPECT_EQ(loaded.fast_steps(), 2);
    for (size_t i = 0; i < narrow.size(); ++i) {
      EXPECT_EQ(loaded.slow_params()[0][i].scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(loaded.slow_params()[0][i], saved.slow_params()[0][i].to(dtype))) << i;
    }
    m.backward(2);
    for (size_t i = 0; i < narrow.size(); ++i) narrow[i].mutable_grad() = m.params()[i].grad().to(dtype);
    loaded.step();  // the converted state steps
  }
}

TEST(Lookahead, CheckpointOfAnotherFloatingDtypeIsConverted) { other_dtype_checkpoint<ho::Lookahead>(); }
TEST(Scout, CheckpointOfAnotherFloatingDtypeIsConverted) { other_dtype_checkpoint<ho::Scout>(); }

TEST(Lookahead, InvalidOptionsInACheckpointAreAValueError) {
  auto p = torch::randn({3}, torch::kDouble).requires_grad_();
  auto base = make_lamb({p});
  ho::Lookahead wrapper(base);
  for (const double rate : {1.5, std::nan("")}) {
    torch::serialize::OutputArchive archive;
    archive.write("holocron/format_version", int64_t{1});
    archive.write("holocron/optimizer", std::string("Lookahead"));
    archive.write("fast_steps", int64_t{0});
    archive.write("sync_rate", rate);
    archive.write("sync_period", int64_t{6});
    archive.write("groups/size", int64_t{1});
    archive.write("groups/0/size", int64_t{1});
    archive.write("slow/0/0", p.detach().clone());
    torch::serialize::OutputArchive base_archive(archive.compilation_unit());
    base->save(base_archive);
    archive.write("base", base_archive);
    std::ostringstream out;
    archive.save_to(out);
    std::istringstream in_stream(out.str());
    torch::serialize::InputArchive in;
    in.load_from(in_stream);
    EXPECT_THROW(wrapper.load(in), c10::ValueError) << rate;
    EXPECT_EQ(wrapper.options().sync_rate(), 0.5);
  }
}

// ---- Scout's sync rate -----------------------------------------------------------

// std (unbiased) / max|u - mean| per element, NaN elements left out, mean
// over elements then over parameters; nothing left: 0.
double naive_coherence(const std::vector<std::vector<std::vector<double>>>& changes) {
  // changes[param][step][element]
  double total = 0.0;
  int counted = 0;
  for (const auto& per_step : changes) {
    const size_t steps = per_step.size();
    const size_t n = per_step[0].size();
    double sum = 0.0;
    int valid = 0;
    for (size_t e = 0; e < n; ++e) {
      double mean = 0.0;
      for (size_t s = 0; s < steps; ++s) mean += per_step[s][e];
      mean /= static_cast<double>(steps);
      double ss = 0.0;
      double maxdev = 0.0;
      for (size_t s = 0; s < steps; ++s) {
        const double dev = per_step[s][e] - mean;
        ss += dev * dev;
        maxdev = std::max(maxdev, std::abs(dev));
      }
      const double ratio = std::sqrt(ss / static_cast<double>(steps - 1)) / maxdev;
      if (std::isnan(ratio)) continue;
      sum += ratio;
      ++valid;
    }
    if (valid == 0) continue;
    total += sum / valid;
    ++counted;
  }
  return counted == 0 ? 0.0 : total / counted;
}

// Scout around Adam; `moving[i]` false: parameter i never gets a gradient.
void scout_rate(const std::vector<bool>& moving, double sync_rate) {
  constexpr int kPeriod = 4;
  Fixture f(3 * kPeriod, 41);
  ho::Scout scout(make_adam(f.params), ho::ScoutOptions().sync_rate(sync_rate).sync_period(kPeriod));
  EXPECT_TRUE(std::isnan(scout.last_sync_rate()));
  auto plain = make_adam(f.mirror);
  std::vector<std::vector<std::vector<double>>> changes(f.params.size());
  for (int k = 0; k < 3 * kPeriod; ++k) {
    f.set_grads(k, f.params);
    f.set_grads(k, f.mirror);
    for (size_t i = 0; i < moving.size(); ++i) {
      if (!moving[i]) {
        f.params[i].mutable_grad() = torch::Tensor();
        f.mirror[i].mutable_grad() = torch::Tensor();
      }
    }
    const auto before = clones(f.mirror);
    scout.step();
    plain->step();
    for (size_t i = 0; i < f.params.size(); ++i) {
      auto u = to_vec(f.mirror[i]);
      const auto b = to_vec(before[i]);
      for (size_t e = 0; e < u.size(); ++e) u[e] -= b[e];
      changes[i].push_back(u);
    }
    if ((k + 1) % kPeriod != 0) continue;
    const double expected = std::max(1.0 - naive_coherence(changes), sync_rate);
    const double rate = scout.last_sync_rate();
    expect_close_scalar(rate, expected, "sync rate at step " + std::to_string(k + 1), 1e-10);
    EXPECT_GE(rate, sync_rate);
    EXPECT_LE(rate, 1.0);
    // The sync used that rate.
    for (size_t i = 0; i < f.params.size(); ++i) {
      ASSERT_FALSE(torch::isnan(f.params[i]).any().item<bool>());
      torch::NoGradGuard no_grad;
      f.mirror[i].copy_(f.params[i]);
      changes[i].clear();
    }
  }
  if (std::find(moving.begin(), moving.end(), true) == moving.end()) {
    // Nothing moved: coherence 0, rate 1, and the parameters are unchanged.
    EXPECT_EQ(scout.last_sync_rate(), 1.0);
  }
}

TEST(Scout, RateMatchesNaiveComputation) { scout_rate({true, true}, 0.2); }
TEST(Scout, RateAtLeastSyncRate) { scout_rate({true, true}, 0.9); }
TEST(Scout, StillParameterIsIgnored) { scout_rate({true, false}, 0.1); }
TEST(Scout, NothingMovesGivesRateOne) { scout_rate({false, false}, 0.3); }

// The sync itself uses the rate: slow + rate * (fast - slow).
TEST(Scout, SyncUsesTheRate) {
  constexpr int kPeriod = 3;
  Fixture f(kPeriod, 42);
  const auto slow0 = clones(f.params);
  ho::Scout scout(make_lamb(f.params), ho::ScoutOptions().sync_rate(0.1).sync_period(kPeriod));
  auto plain = make_lamb(f.mirror);
  for (int k = 0; k < kPeriod; ++k) {
    f.set_grads(k, f.params);
    f.set_grads(k, f.mirror);
    scout.step();
    plain->step();
  }
  const double rate = scout.last_sync_rate();
  ASSERT_GE(rate, 0.1);
  ASSERT_LE(rate, 1.0);
  for (size_t i = 0; i < f.params.size(); ++i) {
    auto expected = to_vec(slow0[i]);
    const auto fast = to_vec(f.mirror[i]);
    for (size_t e = 0; e < expected.size(); ++e) expected[e] += rate * (fast[e] - expected[e]);
    expect_close(f.params[i], expected, "param " + std::to_string(i), 1e-12);
    EXPECT_TRUE(torch::equal(f.params[i], scout.slow_params()[0][i]));
  }
}


TEST(Lookahead, GroupCopiesOutliveTheWrapper) {
  auto p = torch::randn({3}, torch::kDouble).requires_grad_();
  std::unique_ptr<std::vector<OptimizerParamGroup>> copies;
  {
    ho::Lookahead wrapper(make_adam({p}));
    copies = std::make_unique<std::vector<OptimizerParamGroup>>(wrapper.param_groups());
    wrapper.param_groups()[0].options().set_lr(0.25);
  }
  // The copied options still reach the base optimizer, kept alive by them.
  EXPECT_EQ((*copies)[0].options().get_lr(), 0.25);
}

TEST(Lookahead, GroupAddedBehindItsBackFailsBeforeTheBaseSteps) {
  auto p = torch::randn({3}, torch::kDouble).requires_grad_();
  auto q = torch::randn({2}, torch::kDouble).requires_grad_();
  auto base = make_adam({p});
  ho::Lookahead wrapper(base);
  // torch::optim::Optimizer::add_param_group is not virtual: only the wrapper gets the group.
  static_cast<torch::optim::Optimizer&>(wrapper).add_param_group(OptimizerParamGroup({q}));
  p.mutable_grad() = torch::ones_like(p);
  const auto before = p.detach().clone();
  EXPECT_THROW(wrapper.step(), c10::Error);
  EXPECT_TRUE(torch::equal(p, before));
}

// A complex weight is its real and imaginary parts, as in torch's optimizers:
// a wrapper around a base that takes complex parameters (LibTorch's SGD) runs
// as the same wrapper on their real views.
template <typename Wrapper>
void complex_parameters_step_as_their_real_views() {
  torch::manual_seed(7);
  const auto z0 = torch::randn({4, 3}, torch::kComplexDouble);
  const auto r0 = torch::randn({5}, torch::kDouble);
  std::vector<std::vector<torch::Tensor>> results;
  for (bool as_complex : {true, false}) {
    auto z = (as_complex ? z0.clone() : torch::view_as_real(z0).clone()).requires_grad_();
    auto r = r0.clone().requires_grad_();
    auto base = std::make_shared<torch::optim::SGD>(std::vector<torch::Tensor>{z, r},
                                                    torch::optim::SGDOptions(0.05));
    Wrapper wrapper(base, ho::LookaheadOptions().sync_rate(0.3).sync_period(3));
    for (int t = 0; t < 8; ++t) {
      auto gen = at::detail::createCPUGenerator(100 + t);
      auto noise = at::randn({4, 3, 2}, gen, torch::kDouble);
      z.mutable_grad() = as_complex ? torch::view_as_complex(noise) : noise;
      r.mutable_grad() = at::randn({5}, gen, torch::kDouble);
      wrapper.step();
    }
    results.push_back({as_complex ? torch::view_as_real(z.detach()) : z.detach(), r.detach()});
  }
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_TRUE(torch::allclose(results[0][i], results[1][i], 1e-13, 1e-15)) << i;
  }
}

TEST(Lookahead, ComplexParametersStepAsTheirRealViews) {
  complex_parameters_step_as_their_real_views<ho::Lookahead>();
}
TEST(Scout, ComplexParametersStepAsTheirRealViews) {
  complex_parameters_step_as_their_real_views<ho::Scout>();
}

TEST(Lookahead, IntegerParametersAreRefusedBeforeTheBaseSeesThem) {
  auto integer = torch::zeros({3}, torch::kLong);
  EXPECT_THROW(ho::Lookahead wrapper(make_adam({integer})), c10::Error);
  EXPECT_THROW(ho::Scout wrapper(make_adam({integer})), c10::Error);

  auto p = torch::randn({3}, torch::kDouble).requires_grad_();
  auto base = make_adam({p});
  ho::Scout wrapper(base);
  EXPECT_THROW(wrapper.add_param_group(OptimizerParamGroup({integer})), c10::Error);
  EXPECT_EQ(base->param_groups().size(), 1U);
  EXPECT_EQ(wrapper.param_groups().size(), 1U);
  p.mutable_grad() = torch::ones_like(p);
  for (int i = 0; i < 7; ++i) wrapper.step();  // still a working wrapper
  EXPECT_EQ(wrapper.fast_steps(), 7);
}

TEST(Lookahead, ComplexParametersOfOurAlgorithmsAreRefusedByTheirStep) {
  auto complex = torch::randn({3}, torch::kComplexFloat).requires_grad_();
  auto lamb = std::make_shared<ho::LAMB>(std::vector<torch::Tensor>{complex}, ho::LAMBOptions(0.1));
  ho::Lookahead wrapper(lamb);
  complex.mutable_grad() = torch::ones_like(complex);
  const auto before = complex.detach().clone();
  EXPECT_THROW(wrapper.step(), c10::Error);
  EXPECT_TRUE(torch::equal(complex.detach(), before));
  EXPECT_EQ(wrapper.fast_steps(), 0);
}

TEST(Lookahead, WrapperOfWrapperAddsGroupsToTheInnermostBase) {
  auto p = torch::randn({3}, torch::kDouble).requires_grad_();
  auto q = torch::randn({2}, torch::kDouble).requires_grad_();
  auto lamb = std::make_shared<ho::LAMB>(std::vector<torch::Tensor>{p}, ho::LAMBOptions(0.1));
  auto inner = std::make_shared<ho::Lookahead>(lamb);
  ho::Scout outer(inner);
  outer.add_param_group(OptimizerParamGroup({q}, std::make_unique<ho::LAMBOptions>(0.01)));
  ASSERT_EQ(lamb->param_groups().size(), 2U);
  EXPECT_EQ(lamb->param_groups()[1].options().get_lr(), 0.01);
  EXPECT_EQ(outer.param_groups()[1].options().get_lr(), 0.01);
  p.mutable_grad() = torch::ones_like(p);
  q.mutable_grad() = torch::ones_like(q);
  for (int i = 0; i < 7; ++i) outer.step();
  EXPECT_EQ(outer.fast_steps(), 7);
  EXPECT_EQ(inner->fast_steps(), 7);
}

// A parameter converted or resized in place after the wrapper copied it: before the first step the
// copies are taken anew; after it the step throws before the base moves (it used to step the base,
// then fail in the sync or the statistics, or sync double weights through float copies).
template <typename Wrapper>
void changed_parameter(bool resize) {
  auto p = torch::randn({4, 3}).requires_grad_();
  auto q = torch::randn({5}).requires_grad_();
  auto sgd = std::make_shared<torch::optim::SGD>(std::vector<torch::Tensor>{p, q}, torch::optim::SGDOptions(0.1));
  Wrapper opt(sgd, ho::LookaheadOptions().sync_period(2));
  const auto change = [&] {
    torch::NoGradGuard no_grad;
    p.set_data(resize ? torch::randn({5, 3}) : p.detach().to(torch::kDouble));
    p.mutable_grad() = torch::ones_like(p);
    q.mutable_grad() = torch::ones_like(q);
  };
  change();  // before the first step: new copies
  opt.step();
  opt.step();  // a sync
  EXPECT_EQ(opt.slow_params()[0][0].sizes(), p.sizes());
  EXPECT_EQ(opt.slow_params()[0][0].scalar_type(), p.scalar_type());
  // After it: refused, with nothing changed.
  {
    torch::NoGradGuard no_grad;
    p.set_data(resize ? torch::randn({6, 3}) : p.detach().to(torch::kFloat));
  }
  p.mutable_grad() = torch::ones_like(p);
  const auto p_before = p.detach().clone();
  const auto q_before = q.detach().clone();
  const auto steps = opt.fast_steps();
  expect_throw_naming([&] { opt.step(); }, "parameter 0 of group 0 is now", "a changed parameter");
  EXPECT_TRUE(torch::equal(p, p_before));
  EXPECT_TRUE(torch::equal(q, q_before));
  EXPECT_EQ(opt.fast_steps(), steps);
}

TEST(Lookahead, ConvertedParameterIsCopiedAnewThenRefused) { changed_parameter<ho::Lookahead>(false); }
TEST(Lookahead, ResizedParameterIsCopiedAnewThenRefused) { changed_parameter<ho::Lookahead>(true); }
TEST(Scout, ConvertedParameterIsCopiedAnewThenRefused) { changed_parameter<ho::Scout>(false); }
TEST(Scout, ResizedParameterIsCopiedAnewThenRefused) { changed_parameter<ho::Scout>(true); }

}  // namespace
}  // namespace holocron_test
