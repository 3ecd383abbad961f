// Two optimizers stepping at the same time in two threads give the same bits
// as one after the other: the fused path's scratch is per thread and the
// kernels' sums have a fixed order whatever the thread count. One optimizer
// shared by two threads is not thread-safe, as LibTorch's are not.

#include <ATen/Parallel.h>
#include <torch/optim/adam.h>

#include <functional>
#include <sstream>
#include <utility>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace holocron_test {
namespace {

using Factory = std::function<std::shared_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

struct Problem {
  std::vector<torch::Tensor> params;
};

// Big enough tensors for the kernels to split work across threads, and
// many small ones that share chunks.
Problem make_problem(uint64_t seed) {
  torch::manual_seed(seed);
  Problem problem;
  problem.params.push_back(torch::randn({300, 400}).requires_grad_());
  problem.params.push_back(torch::randn({70000}, torch::kDouble).requires_grad_());
  for (int i = 0; i < 20; ++i) problem.params.push_back(torch::randn({i + 1, 3}).requires_grad_());
  return problem;
}

void train(const Factory& make, Problem& problem, uint64_t seed) {
  auto optimizer = make(problem.params);
  for (int step = 0; step < 5; ++step) {
    // Gradients from a generator of our own: the global one is shared by threads.
    auto generator = at::detail::createCPUGenerator(seed * 100 + step);
    for (auto& p : problem.params) {
      p.mutable_grad() = at::randn(p.sizes(), generator, p.options().requires_grad(false)) + 0.1 * p.detach();
    }
    optimizer->step();
  }
}

void expect_concurrent_equals_sequential(const Factory& make) {
  auto sequential_a = make_problem(1), sequential_b = make_problem(2);
  train(make, sequential_a, 1);
  train(make, sequential_b, 2);

  auto concurrent_a = make_problem(1), concurrent_b = make_problem(2);
  std::thread other([&] { train(make, concurrent_b, 2); });
  train(make, concurrent_a, 1);
  other.join();

  for (size_t i = 0; i < sequential_a.params.size(); ++i) {
    EXPECT_TRUE(torch::equal(sequential_a.params[i], concurrent_a.params[i])) << "problem 1, parameter " << i;
    EXPECT_TRUE(torch::equal(sequential_b.params[i], concurrent_b.params[i])) << "problem 2, parameter " << i;
  }
  EXPECT_FALSE(torch::equal(sequential_a.params[0], make_problem(1).params[0])) << "nothing moved";
}

TEST(Threads, TwoLambsAtOnce) {
  expect_concurrent_equals_sequential(
      [](auto p) { return std::make_shared<ho::LAMB>(p, ho::LAMBOptions(1e-2).weight_decay(0.01)); });
}
TEST(Threads, TwoAdamPsAtOnce) {
  expect_concurrent_equals_sequential([](auto p) { return std::make_shared<ho::AdamP>(p, ho::AdamPOptions(1e-2)); });
}
TEST(Threads, TwoTAdamsAtOnce) {
  expect_concurrent_equals_sequential([](auto p) { return std::make_shared<ho::TAdam>(p, ho::TAdamOptions(1e-2)); });
}
TEST(Threads, TwoAdansAtOnce) {
  expect_concurrent_equals_sequential(
      [](auto p) { return std::make_shared<ho::Adan>(p, ho::AdanOptions(1e-2).amsgrad(true)); });
}
TEST(Threads, TwoLarsAtOnce) {
  expect_concurrent_equals_sequential(
      [](auto p) { return std::make_shared<ho::LARS>(p, ho::LARSOptions(1e-2).momentum(0.9)); });
}
TEST(Threads, TwoScoutsAtOnce) {
  expect_concurrent_equals_sequential([](auto p) {
    return std::make_shared<ho::Scout>(std::make_shared<ho::AdEMAMix>(p, ho::AdEMAMixOptions(1e-2)),
                                       ho::ScoutOptions().sync_period(2));
  });
}

// A step over a group of many tensors checks and gathers them on the intra-op threads
// (functional::detail::check_each, from 512 tensors): the bits of one thread, the first bad
// parameter in order named whatever thread meets it first, nothing written by a step that throws.
constexpr int kMany = 600;

std::vector<torch::Tensor> many_params(torch::ScalarType dtype) {
  torch::manual_seed(7);
  std::vector<torch::Tensor> params;
  // The last few of 4096 elements or more: 8-bit codes are kept for those only.
  for (int i = 0; i < kMany; ++i) params.push_back(torch::randn({i < kMany - 8 ? 1 + (i * 37) % 300 : 4096 + i}).to(dtype));
  return params;
}

// The parameters, and the optimizer's checkpoint (its state, bit for bit).
template <typename Traits>
std::pair<std::vector<torch::Tensor>, std::string> train_many(int threads, typename Traits::Options options,
                                                              torch::ScalarType dtype) {
  const int before = at::get_num_threads();
  at::set_num_threads(threads);
  auto params = many_params(dtype);
  typename Traits::Opt optimizer(params, options);
  auto generator = at::detail::createCPUGenerator(11);
  for (int step = 0; step < 3; ++step) {
    for (auto& p : params) p.mutable_grad() = at::randn(p.sizes(), generator, at::kFloat).to(dtype);
    optimizer.step();
  }
  at::set_num_threads(before);
  std::ostringstream checkpoint;
  torch::save(optimizer, checkpoint);
  return {params, checkpoint.str()};
}

template <typename T>
class ManyTensors : public ::testing::Test {};
TYPED_TEST_SUITE(ManyTensors, AllAlgorithms, TraitsName);

TYPED_TEST(ManyTensors, TwoThreadsGiveTheBitsOfOne) {
  using Traits = TypeParam;
  const std::vector<std::pair<typename Traits::Options, torch::ScalarType>> setups = {
      {Traits::options(1e-3), torch::kFloat},
      {Traits::options(1e-3).state_precision(ho::StatePrecision::blockwise8), torch::kFloat},
      {Traits::options(1e-3).kahan_summation(true), torch::kBFloat16},
  };
  for (const auto& [options, dtype] : setups) {
    const auto [one, one_state] = train_many<Traits>(1, options, dtype);
    const auto [two, two_state] = train_many<Traits>(2, options, dtype);
    ASSERT_EQ(one.size(), two.size());
    for (size_t i = 0; i < one.size(); ++i) {
      EXPECT_TRUE(torch::equal(one[i].view(torch::kByte), two[i].view(torch::kByte)))
          << "parameter " << i << ", " << c10::toString(dtype);
    }
    EXPECT_TRUE(one_state == two_state) << "the state differs, " << c10::toString(dtype);
  }
}

TYPED_TEST(ManyTensors, TheFirstBadParameterInOrderIsNamed) {
  using Traits = TypeParam;
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  auto params = many_params(torch::kFloat);
  for (auto& p : params) p.mutable_grad() = torch::randn(p.sizes());
  typename Traits::Opt optimizer(params, Traits::options(1e-3));
  optimizer.step();
  // The second bad one lies on the other thread, which reaches it first.
  for (const int i : {290, 305}) params[i].mutable_grad() = torch::randn({params[i].numel() + 1});
  std::vector<torch::Tensor> before_step;
  for (const auto& p : params) before_step.push_back(p.clone());
  for (int attempt = 0; attempt < 5; ++attempt) {
    try {
      optimizer.step();
      ADD_FAILURE() << "a gradient of another shape was taken";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find("parameter 290 in group 0"), std::string::npos) << e.what();
    }
  }
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i], before_step[i])) << i;
  // The refused step holds none of the gradients it gathered.
  const c10::weak_intrusive_ptr<c10::TensorImpl> gradient(params[0].grad().getIntrusivePtr());
  optimizer.zero_grad();
  EXPECT_TRUE(gradient.expired()) << "a gradient outlived zero_grad after a refused step";
  at::set_num_threads(before);
}

}  // namespace
}  // namespace holocron_test
