// Two optimizers stepping at the same time in two threads give the same bits
// as one after the other: the fused path's scratch is per thread and the
// kernels' sums have a fixed order whatever the thread count. One optimizer
// shared by two threads is not thread-safe, as LibTorch's are not.

#include <ATen/Parallel.h>
#include <torch/optim/adam.h>

#include <functional>
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

}  // namespace
}  // namespace holocron_test
