// The fused CPU kernels through the C++ classes: against the reference (ATen)
// backend, bitwise across thread counts and instruction sets, and the
// capability switch itself.

#include <ATen/Parallel.h>

#include "test_util.h"

namespace holocron_test {
namespace {

namespace F = holocron::optim::functional;

// Restores the process-wide choices a test changes.
class KernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    capability_ = F::cpu_capability();
    threads_ = at::get_num_threads();
  }
  void TearDown() override {
    F::set_cpu_capability(capability_);
    at::set_num_threads(threads_);
  }

 private:
  std::string capability_;
  int threads_ = 1;
};

template <typename Traits>
class KernelsTyped : public KernelTest {};
TYPED_TEST_SUITE(KernelsTyped, AllAlgorithms, TraitsName);

// Parameters (and then state) after a few steps of `Traits`'s optimizer with
// the given backend; shapes cross vector tails and chunk boundaries.
template <typename Traits>
std::vector<torch::Tensor> run(const std::string& capability, int threads, at::ScalarType dtype) {
  F::set_cpu_capability(capability);
  at::set_num_threads(threads);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  std::vector<torch::Tensor> params;
  for (auto shape : std::vector<std::vector<int64_t>>{{}, {7}, {2 * 16384 + 37}, {3, 5, 17}}) {
    params.push_back(at::randn(shape, gen, torch::kDouble).to(dtype).set_requires_grad(true));
  }
  typename Traits::Opt opt(params, Traits::options(1e-2));
  for (int step = 0; step < 4; ++step) {
    for (auto& p : params) {
      p.mutable_grad() = (p.detach().to(torch::kDouble) * 0.3 + at::randn(p.sizes(), gen, torch::kDouble)).to(dtype);
    }
    opt.step();
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().clone());
  return out;
}

TYPED_TEST(KernelsTyped, FusedMatchesReferenceBackendInDouble) {
  const auto expected = run<TypeParam>("reference", 2, torch::kDouble);
  const auto actual = run<TypeParam>("auto", 2, torch::kDouble);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(torch::allclose(actual[i], expected[i], 1e-11, 1e-12)) << "param " << i;
  }
}

TYPED_TEST(KernelsTyped, BitwiseAcrossThreadsAndInstructionSets) {
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto base = run<TypeParam>("default", 1, dtype);
    for (const auto& capability : F::available_cpu_capabilities()) {
      if (capability == "reference") continue;
      for (int threads : {1, 2, 4}) {
        EXPECT_TRUE(all_equal(run<TypeParam>(capability, threads, dtype), base))
            << capability << " with " << threads << " threads, " << dtype;
      }
    }
  }
}

TEST_F(KernelTest, CapabilitySwitch) {
  const auto available = F::available_cpu_capabilities();
  ASSERT_GE(available.size(), 2u);
  EXPECT_EQ(available[0], "reference");
  for (const auto& name : available) {
    F::set_cpu_capability(name);
    EXPECT_EQ(F::cpu_capability(), name);
  }
  expect_throw_naming([] { F::set_cpu_capability("sse9"); }, "sse9", "set_cpu_capability");
}

TEST_F(KernelTest, LookaheadAndScoutFusedMatchReference) {
  std::vector<std::vector<torch::Tensor>> results;
  for (const std::string capability : {"reference", "auto"}) {
    F::set_cpu_capability(capability);
    auto model = TinyModel::make(5);
    auto base = std::make_shared<ho::AdaBelief>(model.params(), ho::AdaBeliefOptions(1e-2));
    ho::Scout scout(base, ho::ScoutOptions().sync_period(3).sync_rate(0.2));
    for (int step = 0; step < 7; ++step) {
      model.backward(step);
      scout.step();
    }
    results.push_back(model.params());
  }
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_TRUE(torch::allclose(results[1][i], results[0][i], 1e-11, 1e-12)) << "param " << i;
  }
}

}  // namespace
}  // namespace holocron_test
