// Checkpoints: a resumed run equals an uninterrupted one bit for bit, and a
// checkpoint that does not fit changes nothing.

#include <torch/optim/schedulers/step_lr.h>
#include <torch/serialize.h>

#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.h"

namespace holocron_test {
namespace {

template <typename T>
class Checkpoint : public ::testing::Test {};
TYPED_TEST_SUITE(Checkpoint, AllAlgorithms, TraitsName);

constexpr int kBefore = 5;  // steps before the checkpoint
constexpr int kAfter = 4;   // steps after it
constexpr unsigned kStepSize = 2;
constexpr double kGamma = 0.5;

template <typename Traits>
std::vector<OptimizerParamGroup> two_groups(const TinyModel& m) {
  using Options = typename Traits::Options;
  std::vector<OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{m.weight},
                      std::make_unique<Options>(Traits::options(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{m.bias, m.scale},
                      std::make_unique<Options>(Traits::options(0.03)));
  return groups;
}

TYPED_TEST(Checkpoint, ResumesBitwiseWithScheduler) {
  using Opt = typename TypeParam::Opt;

  // Uninterrupted run.
  auto full = TinyModel::make(11);
  Opt full_opt(two_groups<TypeParam>(full), TypeParam::options(0.1));
  torch::optim::StepLR full_sched(full_opt, kStepSize, kGamma);
  for (int k = 0; k < kBefore + kAfter; ++k) {
    full.backward(k);
    full_opt.step();
    full_sched.step();
  }

  // Interrupted run: kBefore steps, save, resume in fresh objects.
  auto first = TinyModel::make(11);
  Opt first_opt(two_groups<TypeParam>(first), TypeParam::options(0.1));
  torch::optim::StepLR first_sched(first_opt, kStepSize, kGamma);
  for (int k = 0; k < kBefore; ++k) {
    first.backward(k);
    first_opt.step();
    first_sched.step();
  }
  std::stringstream stream;
  torch::save(first_opt, stream);
  const double lr0 = first_opt.param_groups()[0].options().get_lr();
  const double lr1 = first_opt.param_groups()[1].options().get_lr();
  EXPECT_DOUBLE_EQ(lr0, 0.1 * 0.25);  // the scheduler did change it

  auto resumed = first.clone();
  Opt resumed_opt(two_groups<TypeParam>(resumed), TypeParam::options(0.1));
  torch::optim::StepLR resumed_sched(resumed_opt, kStepSize, kGamma);
  // C++ schedulers keep only a step count: bring it to where it was. The
  // checkpoint's lr must win over whatever that did to the options.
  for (int k = 0; k < kBefore; ++k) resumed_sched.step();
  resumed_opt.param_groups()[0].options().set_lr(123.0);
  torch::load(resumed_opt, stream);
  EXPECT_EQ(resumed_opt.param_groups()[0].options().get_lr(), lr0);
  EXPECT_EQ(resumed_opt.param_groups()[1].options().get_lr(), lr1);
  // The other options come back too.
  expect_same(snapshot<typename TypeParam::State>(first_opt),
              snapshot<typename TypeParam::State>(resumed_opt), "loaded state");

  for (int k = kBefore; k < kBefore + kAfter; ++k) {
    resumed.backward(k);
    resumed_opt.step();
    resumed_sched.step();
  }
  EXPECT_TRUE(all_equal(full.params(), resumed.params()));
  expect_same(snapshot<typename TypeParam::State>(full_opt),
              snapshot<typename TypeParam::State>(resumed_opt), "final state");
}

// A checkpoint saved to a file loads as well, including parameters without state.
TYPED_TEST(Checkpoint, FileAndPartialState) {
  using Opt = typename TypeParam::Opt;
  auto a = TinyModel::make(12);
  Opt opt(a.params(), TypeParam::options(0.1));
  for (int k = 0; k < 2; ++k) {
    opt.zero_grad();
    a.loss(k).backward();
    a.scale.mutable_grad() = torch::Tensor();  // scale never gets state
    opt.step();
  }
  const auto path = ::testing::TempDir() + "holocron_ckpt_" +
                    ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".pt";
  torch::save(opt, path);
  auto b = a.clone();
  Opt loaded(b.params(), TypeParam::options(0.7));
  // State the checkpoint does not have is dropped on load.
  b.backward(0);
  loaded.step();
  ASSERT_EQ(loaded.state().count(b.scale.unsafeGetTensorImpl()), 1u);
  for (size_t i = 0; i < b.params().size(); ++i) b.params()[i].detach().copy_(a.params()[i]);
  torch::load(loaded, path);
  std::remove(path.c_str());
  EXPECT_EQ(loaded.state().count(b.scale.unsafeGetTensorImpl()), 0u);
  EXPECT_EQ(loaded.param_groups()[0].options().get_lr(), 0.1);
  expect_same(snapshot<typename TypeParam::State>(opt),
              snapshot<typename TypeParam::State>(loaded), "loaded from file");
}

// Checkpoints that do not fit are refused and change nothing.
TYPED_TEST(Checkpoint, MismatchedCheckpointChangesNothing) {
  using Opt = typename TypeParam::Opt;
  using Options = typename TypeParam::Options;
  auto a = TinyModel::make(13);
  Opt target(two_groups<TypeParam>(a), TypeParam::options(0.1));
  for (int k = 0; k < 2; ++k) {
    a.backward(k);
    target.step();
  }
  target.param_groups()[1].options().set_lr(0.0123);
  const auto before = snapshot<typename TypeParam::State>(target);
  auto expect_refused = [&](std::stringstream& stream, const std::string& what) {
    EXPECT_ANY_THROW(torch::load(target, stream)) << what;
    expect_same(before, snapshot<typename TypeParam::State>(target), what);
  };

  // Another optimizer kind (LAMB, or Adan when this is LAMB).
  {
    auto m = TinyModel::make(13);
    std::stringstream stream;
    if constexpr (std::is_same_v<Opt, ho::LAMB>) {
      ho::Adan other(two_groups<AdanTraits>(m), AdanTraits::options(0.1));
      m.backward(0);
      other.step();
      torch::save(other, stream);
    } else {
      ho::LAMB other(two_groups<LambTraits>(m), LambTraits::options(0.1));
      m.backward(0);
      other.step();
      torch::save(other, stream);
    }
    expect_refused(stream, "another optimizer kind");
  }
  // A different number of groups.
  {
    auto m = TinyModel::make(13);
    Opt other(m.params(), TypeParam::options(0.1));
    m.backward(0);
    other.step();
    std::stringstream stream;
    torch::save(other, stream);
    expect_refused(stream, "one group instead of two");
  }
  // A different parameter shape (in the second group, so that the first would fit).
  {
    auto m = TinyModel::make(13);
    auto wider = torch::randn({5}, torch::kDouble).set_requires_grad(true);
    std::vector<OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{m.weight},
                        std::make_unique<Options>(TypeParam::options(0.1)));
    groups.emplace_back(std::vector<torch::Tensor>{wider, m.scale},
                        std::make_unique<Options>(TypeParam::options(0.03)));
    Opt other(groups, TypeParam::options(0.1));
    m.backward(0);
    wider.mutable_grad() = torch::ones_like(wider);
    other.step();
    std::stringstream stream;
    torch::save(other, stream);
    expect_refused(stream, "different parameter shape");
  }
  // A different parameter count in a group.
  {
    auto m = TinyModel::make(13);
    std::vector<OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{m.weight},
                        std::make_unique<Options>(TypeParam::options(0.1)));
    groups.emplace_back(std::vector<torch::Tensor>{m.bias},
                        std::make_unique<Options>(TypeParam::options(0.03)));
    Opt other(groups, TypeParam::options(0.1));
    m.backward(0);
    other.step();
    std::stringstream stream;
    torch::save(other, stream);
    expect_refused(stream, "different parameter count");
  }
  // Something that is no checkpoint at all.
  {
    std::stringstream stream;
    torch::serialize::OutputArchive archive;
    archive.write("unrelated", torch::ones({1}));
    archive.save_to(stream);
    expect_refused(stream, "not a holocron checkpoint");
  }
}


// A float64 model's checkpoint loads into a float32 one: floating state of another dtype is converted,
// as torch.optim's (Python) load casts it.
TYPED_TEST(Checkpoint, StateOfAnotherFloatingDtypeIsConverted) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  auto a = TinyModel::make(14);
  Opt opt(a.params(), TypeParam::options(0.1));
  for (int k = 0; k < 2; ++k) {
    a.backward(k);
    opt.step();
  }
  std::stringstream stream;
  torch::save(opt, stream);
  std::vector<torch::Tensor> narrow;
  for (const auto& p : a.params()) narrow.push_back(p.detach().to(torch::kFloat).requires_grad_());
  Opt loaded(narrow, TypeParam::options(0.1));
  torch::load(loaded, stream);
  int compared = 0;
  for (size_t i = 0; i < narrow.size(); ++i) {
    auto& saved = static_cast<State&>(*opt.state().at(a.params()[i].unsafeGetTensorImpl()));
    auto& got = static_cast<State&>(*loaded.state().at(narrow[i].unsafeGetTensorImpl()));
    std::map<std::string, torch::Tensor> expected;
    auto collect = [&](const char* name, auto& value) {
      if constexpr (std::is_same_v<std::decay_t<decltype(value)>, torch::Tensor>) {
        if (value.defined()) expected[name] = value;
      }
    };
    State::fields(saved, collect);
    auto check = [&](const char* name, auto& value) {
      if constexpr (std::is_same_v<std::decay_t<decltype(value)>, torch::Tensor>) {
        if (!expected.count(name)) return;
        EXPECT_EQ(value.scalar_type(), torch::kFloat) << name;
        EXPECT_TRUE(torch::equal(value, expected[name].to(torch::kFloat))) << name;
        ++compared;
      }
    };
    State::fields(got, check);
  }
  EXPECT_GT(compared, 0);
  for (const auto& p : narrow) p.mutable_grad() = torch::ones_like(p);
  loaded.step();
  for (const auto& p : narrow) EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
}

TEST(CheckpointCounters, NegativeStepIsRefusedOnLoad) {
  auto p = torch::randn({4}, torch::kDouble).requires_grad_();
  ho::AdamP opt({p}, ho::AdamPOptions(0.1));
  p.mutable_grad() = torch::ones_like(p);
  opt.step();
  auto& state = static_cast<ho::AdamPParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
  state.step(-1);
  std::stringstream stream;
  torch::save(opt, stream);
  // A corrupt counter is also refused by the step, before anything changes.
  const auto before = p.detach().clone();
  EXPECT_THROW(opt.step(), c10::Error);
  EXPECT_TRUE(torch::equal(p, before));

  auto fresh_p = p.detach().clone().requires_grad_();
  ho::AdamP fresh({fresh_p}, ho::AdamPOptions(0.1));
  EXPECT_THROW(torch::load(fresh, stream), c10::Error);
  EXPECT_TRUE(fresh.state().empty());
}

}  // namespace
}  // namespace holocron_test
