// state_precision: float32 or bfloat16 per-element state for any parameter dtype, chosen per
// group. A step with it equals, bit for bit, a step in the parameter's precision whose state is
// rounded to that dtype after each step (a narrower buffer loaded into the math type holds
// exactly such values); checkpoints convert to each group's precision; state of another dtype
// than its group's is refused with nothing changed.

#include <torch/serialize.h>

#include <algorithm>
#include <sstream>
#include <cstring>
#include <string>
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
  for (const auto precision : {ho::StatePrecision::param, ho::StatePrecision::float32, ho::StatePrecision::bfloat16,
                               ho::StatePrecision::blockwise8}) {
    EXPECT_EQ(ho::state_precision_from_string(ho::to_string(precision)), precision);
  }
  EXPECT_EQ(std::string(ho::to_string(ho::StatePrecision::blockwise8)), "8bit");
  EXPECT_THROW(ho::state_precision_from_string("float16"), c10::ValueError);
  EXPECT_THROW(ho::state_precision_from_string("8-bit"), c10::ValueError);
}

// ---- 8-bit state ---------------------------------------------------------------------------

namespace blockwise {

// Two tensors large enough for codes (>= 4096 elements) and one that keeps float32 moments.
std::vector<torch::Tensor> weights(int64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<torch::Tensor> out;
  for (const auto& shape : {std::vector<int64_t>{70, 64}, std::vector<int64_t>{30}, std::vector<int64_t>{64, 72}}) {
    out.push_back(at::randn(shape, gen, torch::kFloat).requires_grad_());
  }
  return out;
}

void set_grads(const std::vector<torch::Tensor>& params, int step) {
  auto gen = at::detail::createCPUGenerator(100 + step);
  for (const auto& p : params) p.mutable_grad() = 0.3 * p.detach() + at::randn(p.sizes(), gen, torch::kFloat);
}

template <typename State>
torch::Tensor* field(State& state, const char* name) {
  torch::Tensor* found = nullptr;
  auto visit = [&](const char* field_name, auto& value) {
    if constexpr (std::is_same_v<std::decay_t<decltype(value)>, torch::Tensor>) {
      if (std::string(field_name) == name) found = &value;
    }
  };
  State::fields(state, visit);
  return found;
}

template <typename State>
State& state_of(torch::optim::Optimizer& opt, const torch::Tensor& p) {
  return static_cast<State&>(*opt.state().at(p.unsafeGetTensorImpl()));
}

}  // namespace blockwise

// The class with 8-bit state equals, bit for bit, the class with float32 state whose moments of
// the large tensors are replaced by their decoded codes after every step.
TYPED_TEST(StatePrecisionTest, BlockwiseStepsAsFloat32StateRoundedThroughCodes) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  auto coded = blockwise::weights(3);
  std::vector<torch::Tensor> emulated;
  for (const auto& p : coded) emulated.push_back(p.detach().clone().requires_grad_());
  Opt coded_opt(coded, TypeParam::options(1e-2).state_precision(ho::StatePrecision::blockwise8));
  Opt emulated_opt(emulated, TypeParam::options(1e-2).state_precision(ho::StatePrecision::float32));
  for (int k = 0; k < 5; ++k) {
    blockwise::set_grads(coded, k);
    blockwise::set_grads(emulated, k);
    coded_opt.step();
    emulated_opt.step();
    for (const auto& p : emulated) {
      if (p.numel() < ho::detail::kBlockwiseMinNumel) continue;
      for (const auto& moment : State::coded_moments()) {
        auto* buffer = blockwise::field(blockwise::state_of<State>(emulated_opt, p), moment.name);
        if (!buffer->defined()) continue;
        const auto encoded = ho::functional::quantize_blockwise(*buffer, moment.is_signed);
        buffer->copy_(ho::functional::dequantize_blockwise(encoded.codes, encoded.absmax, moment.is_signed));
      }
    }
  }
  EXPECT_TRUE(all_equal(coded, emulated));
  size_t codes = 0;
  for (size_t i = 0; i < coded.size(); ++i) {
    auto& state = blockwise::state_of<State>(coded_opt, coded[i]);
    for (const auto& moment : State::coded_moments()) {
      const auto* buffer = blockwise::field(state, moment.name);
      if (!buffer->defined()) continue;
      const bool large = coded[i].numel() >= ho::detail::kBlockwiseMinNumel;
      EXPECT_EQ(buffer->scalar_type(), large ? torch::kByte : torch::kFloat) << moment.name;
      EXPECT_EQ(blockwise::field(state, moment.absmax)->defined(), large) << moment.absmax;
      codes += large;
    }
  }
  EXPECT_GT(codes, 0u);
}

TYPED_TEST(StatePrecisionTest, BlockwiseCheckpointsResumeAndConvert) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  const auto eight = ho::StatePrecision::blockwise8;
  auto first = blockwise::weights(5);
  Opt opt(first, TypeParam::options(1e-2).state_precision(eight));
  for (int k = 0; k < 3; ++k) {
    blockwise::set_grads(first, k);
    opt.step();
  }
  std::stringstream stream;
  torch::save(opt, stream);
  std::vector<torch::Tensor> second;
  for (const auto& p : first) second.push_back(p.detach().clone().requires_grad_());

  // Into float32 state: decoded, scales dropped.
  Opt wide(second, TypeParam::options(1e-2).state_precision(ho::StatePrecision::float32));
  torch::load(wide, stream);
  for (size_t i = 0; i < first.size(); ++i) {
    for (const auto& moment : State::coded_moments()) {
      const auto* saved = blockwise::field(blockwise::state_of<State>(opt, first[i]), moment.name);
      auto& loaded = blockwise::state_of<State>(wide, second[i]);
      if (!saved->defined()) continue;
      EXPECT_EQ(blockwise::field(loaded, moment.name)->scalar_type(), torch::kFloat);
      EXPECT_FALSE(blockwise::field(loaded, moment.absmax)->defined());
      const auto expected =
          saved->scalar_type() == torch::kByte
              ? ho::functional::dequantize_blockwise(
                    *saved, *blockwise::field(blockwise::state_of<State>(opt, first[i]), moment.absmax),
                    moment.is_signed)
              : *saved;
      EXPECT_TRUE(torch::equal(*blockwise::field(loaded, moment.name), expected)) << moment.name;
    }
  }

  // Into 8-bit state: the same codes and scales, and the same bits after more steps.
  stream.seekg(0);
  Opt resumed(second, TypeParam::options(1e-2).state_precision(eight));
  torch::load(resumed, stream);
  for (int k = 3; k < 6; ++k) {
    blockwise::set_grads(first, k);
    blockwise::set_grads(second, k);
    opt.step();
    resumed.step();
  }
  EXPECT_TRUE(all_equal(first, second));

  // Float32 state into 8-bit: encoded from the values saved.
  std::stringstream wide_stream;
  torch::save(wide, wide_stream);
  Opt narrow(second, TypeParam::options(1e-2).state_precision(eight));
  torch::load(narrow, wide_stream);
  for (size_t i = 0; i < second.size(); ++i) {
    if (second[i].numel() < ho::detail::kBlockwiseMinNumel) continue;
    for (const auto& moment : State::coded_moments()) {
      const auto* values = blockwise::field(blockwise::state_of<State>(wide, second[i]), moment.name);
      if (!values->defined()) continue;
      const auto encoded = ho::functional::quantize_blockwise(*values, moment.is_signed);
      auto& loaded = blockwise::state_of<State>(narrow, second[i]);
      EXPECT_TRUE(torch::equal(*blockwise::field(loaded, moment.name), encoded.codes)) << moment.name;
      EXPECT_TRUE(torch::equal(*blockwise::field(loaded, moment.absmax), encoded.absmax)) << moment.absmax;
    }
  }
}

TYPED_TEST(StatePrecisionTest, BlockwiseStateThatDoesNotFitIsRefusedWithNothingChanged) {
  using Opt = typename TypeParam::Opt;
  using Options = typename TypeParam::Options;
  using State = typename TypeParam::State;
  auto params = blockwise::weights(7);
  Opt opt(params, TypeParam::options(1e-2).state_precision(ho::StatePrecision::blockwise8));
  for (int k = 0; k < 2; ++k) {
    blockwise::set_grads(params, k);
    opt.step();
  }
  auto expect_refused = [&](const char* what, const char* message) {
    const auto before = snapshot<State>(opt);
    std::vector<torch::Tensor> weights;
    for (const auto& p : params) weights.push_back(p.detach().clone());
    blockwise::set_grads(params, 9);
    try {
      opt.step();
      ADD_FAILURE() << "a step took " << what;
    } catch (const c10::Error& error) {
      EXPECT_NE(std::string(error.what()).find(message), std::string::npos) << error.what();
    }
    expect_same(before, snapshot<State>(opt), what);
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(weights[i], params[i].detach())) << what;
  };
  // Scales of the wrong length.
  auto& state = blockwise::state_of<State>(opt, params[0]);
  const auto& moment = State::coded_moments()[0];
  auto* absmax = blockwise::field(state, moment.absmax);
  const auto kept = *absmax;
  *absmax = kept.narrow(0, 0, kept.numel() - 1).clone();
  expect_refused("short scales", "must be a contiguous float32 tensor of");
  *absmax = kept;
  // The group switched to float32 state after steps: its codes are refused until a load converts.
  static_cast<Options&>(opt.param_groups()[0].options()).state_precision(ho::StatePrecision::float32);
  expect_refused("codes in a float32 group", "keeps it as floats");
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


// kahan_summation: a bfloat16 weight is p + kahan_comp. A class stepping bfloat16 weights with it
// equals, bit for bit, the same class stepping float32 weights with bfloat16 state whose weights
// are split after each step into p (rounded) and c (what that dropped, rounded) and put back as
// p + c: the step reads p + c in float32 and stores the rounded split. A checkpoint resumes bit for
// bit with its compensations.
namespace kahan {

std::vector<torch::Tensor> weights(uint64_t seed) {
  torch::manual_seed(seed);
  return {(1.0 + 0.5 * torch::rand({33, 7})).to(torch::kBFloat16).requires_grad_(),
          (torch::randn({5}) * 0.1).to(torch::kBFloat16).requires_grad_(),
          torch::randn({2, 3, 3}).to(torch::kBFloat16).requires_grad_()};
}

// Step k's gradients of `targets` (in their dtype), bfloat16 values from the weights the model
// holds (`held`, its p).
void set_grads(const std::vector<torch::Tensor>& held, const std::vector<torch::Tensor>& targets, int k) {
  for (size_t i = 0; i < held.size(); ++i) {
    targets[i].mutable_grad() = (torch::sin(held[i].detach().to(torch::kFloat) * (k + 1)) * 0.5)
                                 .to(torch::kBFloat16)
                                 .to(targets[i].scalar_type());
  }
}

}  // namespace kahan

TYPED_TEST(StatePrecisionTest, KahanSummationStepsOnTheCompensatedWeights) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  auto low = kahan::weights(7);
  std::vector<torch::Tensor> wide;
  for (const auto& p : low) wide.push_back(p.detach().to(torch::kFloat).requires_grad_());
  Opt low_opt(low, TypeParam::options(1e-3).kahan_summation(true));
  Opt wide_opt(wide, TypeParam::options(1e-3).state_precision(ho::StatePrecision::bfloat16));
  for (int k = 0; k < 8; ++k) {
    kahan::set_grads(low, low, k);
    kahan::set_grads(low, wide, k);
    low_opt.step();
    wide_opt.step();
    torch::NoGradGuard no_grad;
    for (const auto& w : wide) {
      const auto p = w.to(torch::kBFloat16);
      const auto c = (w - p.to(torch::kFloat)).to(torch::kBFloat16);
      w.copy_(p.to(torch::kFloat) + c.to(torch::kFloat));
      // What the class keeps in the parameter's dtype (TAdam's W_t), as bfloat16 weights keep it.
      auto& state = static_cast<State&>(*wide_opt.state().at(w.unsafeGetTensorImpl()));
      auto round_w_t = [](const char* name, auto& value) {
        if constexpr (std::is_same_v<std::decay_t<decltype(value)>, torch::Tensor>) {
          if (std::string(name) == "W_t" && value.defined()) value.copy_(value.to(torch::kBFloat16));
        }
      };
      State::fields(state, round_w_t);
    }
  }
  // TAdam's W_t is kept in the parameter's dtype: the float32 run rounds it to float32 and then to
  // bfloat16 (twice), so there the weights agree to a tolerance, not bit for bit.
  const bool exact = std::string(TypeParam::name) != "TAdam";
  bool compensated = false;
  for (size_t i = 0; i < low.size(); ++i) {
    auto& state = static_cast<State&>(*low_opt.state().at(low[i].unsafeGetTensorImpl()));
    ASSERT_TRUE(state.kahan_comp().defined());
    EXPECT_EQ(state.kahan_comp().scalar_type(), at::kBFloat16);
    compensated = compensated || state.kahan_comp().ne(0).any().template item<bool>();
    const auto p = wide[i].detach().to(torch::kBFloat16);
    if (exact) {
      EXPECT_TRUE(torch::equal(low[i].detach(), p)) << i;
      EXPECT_TRUE(torch::equal(state.kahan_comp(), (wide[i].detach() - p.to(torch::kFloat)).to(torch::kBFloat16)))
          << i;
    } else {
      const auto weight = low[i].detach().to(torch::kFloat) + state.kahan_comp().to(torch::kFloat);
      EXPECT_TRUE(torch::allclose(weight, wide[i].detach(), 1e-4, 1e-5)) << i;
    }
  }
  EXPECT_TRUE(compensated);
}

// Turned off, a group's weights go on from p and its compensations are dropped: turned on again,
// they start from zeros, as for a twin whose compensations were cleared by hand.
TYPED_TEST(StatePrecisionTest, KahanSummationTurnedOffDropsTheCompensations) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  using Options = std::decay_t<decltype(TypeParam::options(1e-3))>;
  auto first = kahan::weights(11);
  Opt opt(first, TypeParam::options(1e-3).kahan_summation(true));
  for (int k = 0; k < 3; ++k) {
    kahan::set_grads(first, first, k);
    opt.step();
  }
  static_cast<Options&>(opt.param_groups()[0].options()).kahan_summation(false);
  kahan::set_grads(first, first, 3);
  opt.step();
  for (const auto& p : first) {
    EXPECT_FALSE(static_cast<State&>(*opt.state().at(p.unsafeGetTensorImpl())).kahan_comp().defined());
  }
  std::stringstream stream;
  torch::save(opt, stream);
  std::vector<torch::Tensor> second;
  for (const auto& p : first) second.push_back(p.detach().clone().requires_grad_());
  Opt twin(second, TypeParam::options(1e-3));
  torch::load(twin, stream);
  static_cast<Options&>(opt.param_groups()[0].options()).kahan_summation(true);
  static_cast<Options&>(twin.param_groups()[0].options()).kahan_summation(true);
  for (int k = 4; k < 6; ++k) {
    kahan::set_grads(first, first, k);
    kahan::set_grads(second, second, k);
    opt.step();
    twin.step();
  }
  EXPECT_TRUE(all_equal(first, second));
  for (size_t i = 0; i < first.size(); ++i) {
    const auto& a = static_cast<State&>(*opt.state().at(first[i].unsafeGetTensorImpl())).kahan_comp();
    const auto& b = static_cast<State&>(*twin.state().at(second[i].unsafeGetTensorImpl())).kahan_comp();
    ASSERT_TRUE(a.defined() && b.defined()) << i;
    EXPECT_TRUE(torch::equal(a, b)) << i;
  }
}

TYPED_TEST(StatePrecisionTest, KahanSummationResumesFromACheckpoint) {
  using Opt = typename TypeParam::Opt;
  using State = typename TypeParam::State;
  auto first = kahan::weights(9);
  Opt opt(first, TypeParam::options(1e-3).kahan_summation(true));
  for (int k = 0; k < 3; ++k) {
    kahan::set_grads(first, first, k);
    opt.step();
  }
  std::stringstream stream;
  torch::save(opt, stream);
  std::vector<torch::Tensor> second;
  for (const auto& p : first) second.push_back(p.detach().clone().requires_grad_());
  Opt resumed(second, TypeParam::options(1e-3).kahan_summation(true));
  torch::load(resumed, stream);
  for (int k = 3; k < 6; ++k) {
    kahan::set_grads(first, first, k);
    kahan::set_grads(second, second, k);
    opt.step();
    resumed.step();
  }
  EXPECT_TRUE(all_equal(first, second));
  for (size_t i = 0; i < first.size(); ++i) {
    const auto& a = static_cast<State&>(*opt.state().at(first[i].unsafeGetTensorImpl())).kahan_comp();
    const auto& b = static_cast<State&>(*resumed.state().at(second[i].unsafeGetTensorImpl())).kahan_comp();
    EXPECT_TRUE(torch::equal(a, b)) << i;
  }
  // A compensation of another dtype than its weight's is refused, with nothing changed.
  auto& state = static_cast<State&>(*resumed.state().at(second[0].unsafeGetTensorImpl()));
  state.kahan_comp(state.kahan_comp().to(torch::kFloat));
  const auto before = second[1].detach().clone();
  kahan::set_grads(second, second, 7);
  EXPECT_THROW(resumed.step(), c10::Error);
  EXPECT_TRUE(torch::equal(before, second[1].detach()));
}

// Lookahead's sync reads a compensated weight as p + c and leaves p + c equal to the slow weight
// (float32 slow weights with float32 state): the run stays within float32's last bits of one on
// float32 weights split after each step, where one without compensation ends far away. Scout
// refuses such a base, with nothing changed.
TEST(StatePrecision, LookaheadSyncsCompensatedWeights) {
  auto low = kahan::weights(13);
  std::vector<torch::Tensor> wide, plain;
  for (const auto& p : low) {
    wide.push_back(p.detach().to(torch::kFloat).requires_grad_());
    plain.push_back(p.detach().clone().requires_grad_());
  }
  auto options = [](bool kahan) {
    return ho::AdanOptions(3e-3).state_precision(ho::StatePrecision::float32).kahan_summation(kahan);
  };
  auto low_base = std::make_shared<ho::Adan>(low, options(true));
  ho::Lookahead low_opt(low_base, ho::LookaheadOptions().sync_period(3));
  ho::Lookahead wide_opt(std::make_shared<ho::Adan>(wide, options(false)), ho::LookaheadOptions().sync_period(3));
  ho::Lookahead plain_opt(std::make_shared<ho::Adan>(plain, options(false)), ho::LookaheadOptions().sync_period(3));
  for (int k = 0; k < 9; ++k) {
    kahan::set_grads(low, low, k);
    kahan::set_grads(low, wide, k);
    kahan::set_grads(low, plain, k);
    low_opt.step();
    wide_opt.step();
    plain_opt.step();
    torch::NoGradGuard no_grad;
    for (const auto& w : wide) {
      const auto p = w.to(torch::kBFloat16);
      w.copy_(p.to(torch::kFloat) + (w - p.to(torch::kFloat)).to(torch::kBFloat16).to(torch::kFloat));
    }
  }
  double kahan_error = 0.0, plain_error = 0.0;
  for (size_t i = 0; i < low.size(); ++i) {
    const auto& state = static_cast<ho::AdanParamState&>(*low_base->state().at(low[i].unsafeGetTensorImpl()));
    const auto weight = low[i].detach().to(torch::kFloat) + state.kahan_comp().to(torch::kFloat);
    kahan_error = std::max(kahan_error, (weight - wide[i].detach()).abs().max().item<double>());
    plain_error = std::max(plain_error, (plain[i].detach().to(torch::kFloat) - wide[i].detach()).abs().max().item<double>());
  }
  EXPECT_LT(kahan_error, 5e-5);
  EXPECT_GT(plain_error, 1e-3);

  auto scouted = kahan::weights(13);
  auto scout_base = std::make_shared<ho::Adan>(scouted, options(true));
  ho::Scout scout(scout_base, ho::ScoutOptions().sync_period(3));
  const auto before = scouted[0].detach().clone();
  kahan::set_grads(scouted, scouted, 0);
  EXPECT_THROW(scout.step(), c10::Error);
  EXPECT_TRUE(torch::equal(before, scouted[0].detach()));
  EXPECT_TRUE(scout_base->state().empty());
  // Through a Lookahead too.
  ho::Scout nested(std::make_shared<ho::Lookahead>(scout_base), ho::ScoutOptions().sync_period(3));
  EXPECT_THROW(nested.step(), c10::Error);
  EXPECT_TRUE(torch::equal(before, scouted[0].detach()));
  EXPECT_TRUE(scout_base->state().empty());
}

}  // namespace
}  // namespace holocron_test

namespace holocron_test {
namespace {

// A moment the update no longer takes (amsgrad switched off, LARS' momentum set to 0) keeps its
// codes in the state, unused: the steps go on, as with float32 state.
TEST(StatePrecision, BlockwiseMomentsAnUpdateNoLongerTakesAreLeftAlone) {
  for (const auto precision : {ho::StatePrecision::float32, ho::StatePrecision::blockwise8}) {
    auto params = blockwise::weights(11);
    ho::TAdam tadam(params, ho::TAdamOptions(1e-3).amsgrad(true).state_precision(precision));
    blockwise::set_grads(params, 0);
    tadam.step();
    static_cast<ho::TAdamOptions&>(tadam.param_groups()[0].options()).amsgrad(false);
    blockwise::set_grads(params, 1);
    EXPECT_NO_THROW(tadam.step()) << ho::to_string(precision);

    auto more = blockwise::weights(12);
    ho::LARS lars(more, ho::LARSOptions(1e-2).momentum(0.9).state_precision(precision));
    blockwise::set_grads(more, 0);
    lars.step();
    static_cast<ho::LARSOptions&>(lars.param_groups()[0].options()).momentum(0.0);
    blockwise::set_grads(more, 1);
    EXPECT_NO_THROW(lars.step()) << ho::to_string(precision);
  }
}

}  // namespace
}  // namespace holocron_test
