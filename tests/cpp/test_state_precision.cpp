// state_precision: float32 or bfloat16 per-element state for any parameter dtype, chosen per
// group. A step with it equals, bit for bit, a step in the parameter's precision whose state is
// rounded to that dtype after each step (a narrower buffer loaded into the math type holds
// exactly such values); checkpoints convert to each group's precision; state of another dtype
// than its group's is refused with nothing changed.

#include <torch/serialize.h>

#include <sstream>
#include <type_traits>
#include <utility>

#include "test_util.h"

namespace holocron_test {
namespace {

template <typename T>
class StatePrecisionTest : public ::testing::Test {};
TYPED_TEST_SUITE(StatePrecisionTest, AllAlgorithms, TraitsName);

constexpr std::pair<ho::StatePrecision, at::ScalarType> kLean[] = {
    {ho::StatePrecision::bfloat16, at::kBFloat16}, {ho::StatePrecision::float32, at::kFloat}};

// Calls `on_buffer(tensor)` on every defined state buffer of `param` in `opt`.
template <typename State, typename OnBuffer>
void for_each_buffer(torch::optim::Optimizer& opt, const torch::Tensor& param, OnBuffer on_buffer) {
  auto& state = static_cast<State&>(*opt.state().at(param.unsafeGetTensorImpl()));
  auto visit = [&](const char*, auto& value) {
    if constexpr (std::is_same_v<std::decay_t<decltype(value)>, torch::Tensor>) {
      if (value.defined()) on_buffer(value);
    }
  };
  State::fields(state, visit);
}

template <typename State>
std::vector<torch::Tensor> buffers_of(torch::optim::Optimizer& opt, const TinyModel& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.params()) for_each_buffer<State>(opt, p, [&](torch::Tensor& t) { out.push_back(t); });
  return out;
}

TYPED_TEST(StatePrecisionTest, StepsAsStateRoundedAfterEachStep) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  for (const auto& [precision, dtype] : kLean) {
    auto lean = TinyModel::make(3);
    auto emulated = lean.clone();
    Opt lean_opt(lean.params(), TypeParam::options(0.05).state_precision(precision));
    Opt emulated_opt(emulated.params(), TypeParam::options(0.05));
    for (int k = 0; k < 6; ++k) {
      lean.backward(k);
      lean_opt.step();
      emulated.backward(k);
      emulated_opt.step();
      for (const auto& p : emulated.params()) {
        for_each_buffer<State>(emulated_opt, p, [dtype = dtype](torch::Tensor& t) { t.copy_(t.to(dtype)); });
      }
    }
    EXPECT_TRUE(all_equal(lean.params(), emulated.params())) << ho::to_string(precision);
    const auto lean_buffers = buffers_of<State>(lean_opt, lean);
    const auto emulated_buffers = buffers_of<State>(emulated_opt, emulated);
    ASSERT_EQ(lean_buffers.size(), emulated_buffers.size());
    ASSERT_FALSE(lean_buffers.empty());
    for (size_t i = 0; i < lean_buffers.size(); ++i) {
      EXPECT_EQ(lean_buffers[i].scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(lean_buffers[i], emulated_buffers[i].to(dtype))) << i;
    }
  }
}

TYPED_TEST(StatePrecisionTest, CheckpointsConvertToEachGroupsPrecision) {
  using Opt = typename TypeParam::Opt;
  using Options = typename TypeParam::Options;
  using State = typename TypeParam::State;
  auto m = TinyModel::make(5);
  Opt lean(m.params(), TypeParam::options(0.05).state_precision(ho::StatePrecision::bfloat16));
  for (int k = 0; k < 3; ++k) {
    m.backward(k);
    lean.step();
  }
  std::stringstream lean_checkpoint;
  torch::save(lean, lean_checkpoint);

  // Into the parameters' precision: widened exactly; the group keeps its own precision.
  Opt wide(m.params(), TypeParam::options(0.05));
  torch::load(wide, lean_checkpoint);
  EXPECT_EQ(static_cast<const Options&>(wide.param_groups()[0].options()).state_precision(),
            ho::StatePrecision::param);
  const auto lean_buffers = buffers_of<State>(lean, m);
  auto wide_buffers = buffers_of<State>(wide, m);
  ASSERT_EQ(wide_buffers.size(), lean_buffers.size());
  for (size_t i = 0; i < lean_buffers.size(); ++i) {
    EXPECT_EQ(wide_buffers[i].scalar_type(), torch::kDouble);
    EXPECT_TRUE(torch::equal(wide_buffers[i], lean_buffers[i].to(torch::kDouble))) << i;
  }

  // And back into float32 state: rounded from the saved values.
  std::stringstream wide_checkpoint;
  torch::save(wide, wide_checkpoint);
  Opt mixed(m.params(), TypeParam::options(0.05).state_precision(ho::StatePrecision::float32));
  torch::load(mixed, wide_checkpoint);
  const auto mixed_buffers = buffers_of<State>(mixed, m);
  for (size_t i = 0; i < lean_buffers.size(); ++i) {
    EXPECT_EQ(mixed_buffers[i].scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::equal(mixed_buffers[i], lean_buffers[i].to(torch::kFloat))) << i;
  }
  m.backward(3);
  mixed.step();
  wide.step();
}

TYPED_TEST(StatePrecisionTest, StateOfAnotherPrecisionIsRefusedWithNothingChanged) {
  using Opt = typename TypeParam::Opt;
  using Options = typename TypeParam::Options;
  using State = typename TypeParam::State;
  auto m = TinyModel::make(7);
  Opt opt(m.params(), TypeParam::options(0.05));
  for (int k = 0; k < 2; ++k) {
    m.backward(k);
    opt.step();
  }
  const auto before = snapshot<State>(opt);
  static_cast<Options&>(opt.param_groups()[0].options()).state_precision(ho::StatePrecision::bfloat16);
  m.backward(2);
  try {
    opt.step();
    FAIL() << "a step took state of another precision than its group's";
  } catch (const c10::Error& error) {
    EXPECT_NE(std::string(error.what()).find("state_precision bfloat16"), std::string::npos) << error.what();
  }
  expect_same(before, snapshot<State>(opt), "after the refused step");
}

TEST(StatePrecision, NamesAreThePythonClassesOnes) {
  for (const auto precision : {ho::StatePrecision::param, ho::StatePrecision::float32, ho::StatePrecision::bfloat16}) {
    EXPECT_EQ(ho::state_precision_from_string(ho::to_string(precision)), precision);
  }
  EXPECT_THROW(ho::state_precision_from_string("float16"), c10::ValueError);
  try {
    ho::state_precision_from_string("8bit");
    FAIL();
  } catch (const c10::ValueError& error) {
    EXPECT_NE(std::string(error.what()).find("not available yet"), std::string::npos) << error.what();
  }
}

TEST(StatePrecision, FactoryGivesItsOptimizersThePrecision) {
  auto m = TinyModel::make(9);
  ho::FactoryOptions options;
  options.state_precision = ho::StatePrecision::bfloat16;
  auto opt = ho::create_optimizer("lamb", {torch::optim::OptimizerParamGroup(m.params())}, options);
  m.backward(0);
  opt->step();
  const auto buffers = buffers_of<ho::LAMBParamState>(*opt, m);
  ASSERT_EQ(buffers.size(), 6u);
  for (const auto& t : buffers) EXPECT_EQ(t.scalar_type(), at::kBFloat16);
}

TEST(StatePrecision, WrappersFollowTheirBase) {
  auto m = TinyModel::make(11);
  auto make_lamb = [&](ho::StatePrecision precision) {
    return std::make_shared<ho::LAMB>(m.params(), ho::LAMBOptions(0.02).state_precision(precision));
  };
  ho::Scout scout(make_lamb(ho::StatePrecision::bfloat16), ho::ScoutOptions().sync_period(2));
  ho::Lookahead lookahead(std::make_shared<ho::Lookahead>(make_lamb(ho::StatePrecision::float32)),
                          ho::LookaheadOptions().sync_period(2));
  for (int k = 0; k < 5; ++k) {
    m.backward(k);
    scout.step();
  }
  for (const auto& slow : scout.slow_params()[0]) EXPECT_EQ(slow.scalar_type(), at::kBFloat16);
  for (const auto& slow : lookahead.slow_params()[0]) EXPECT_EQ(slow.scalar_type(), at::kFloat);

  // Into a Scout whose base keeps the parameters' precision: the slow weights and statistics
  // are converted to it (exactly: bfloat16 values fit float64).
  std::stringstream checkpoint;
  torch::save(scout, checkpoint);
  auto other = TinyModel::make(11);
  ho::Scout wide(std::make_shared<ho::LAMB>(other.params(), ho::LAMBOptions(0.02)), ho::ScoutOptions().sync_period(2));
  torch::load(wide, checkpoint);
  ASSERT_EQ(wide.slow_params()[0].size(), scout.slow_params()[0].size());
  for (size_t i = 0; i < wide.slow_params()[0].size(); ++i) {
    EXPECT_EQ(wide.slow_params()[0][i].scalar_type(), at::kDouble);
    EXPECT_TRUE(torch::equal(wide.slow_params()[0][i], scout.slow_params()[0][i].to(at::kDouble))) << i;
  }
  other.backward(5);
  wide.step();
}

}  // namespace
}  // namespace holocron_test
