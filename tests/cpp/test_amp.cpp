// Mixed-precision loss scaling in the C++ classes: step(GradScaling, closure)
// reads the gradients unscaled (same bits as unscaling them first, gradients
// left as they are) and skips the whole step on found_inf.

#include <torch/optim/adam.h>
#include <torch/serialize.h>

#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace holocron_test {
namespace {

using Factory = std::function<std::shared_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;
namespace F = holocron::optim::functional;

std::vector<torch::Tensor> make_params() {
  torch::manual_seed(3);
  return {torch::randn({4, 3}).requires_grad_(), torch::randn({70}).requires_grad_(),
          torch::randn({}).requires_grad_()};
}

void set_grads(const std::vector<torch::Tensor>& params, int step, double scale) {
  auto generator = at::detail::createCPUGenerator(50 + step);
  for (const auto& p : params) {
    p.mutable_grad() = (at::randn(p.sizes(), generator, p.options().requires_grad(false)) + p.detach()) * scale;
  }
}

torch::Tensor scaled_step(torch::optim::Optimizer& opt, const F::GradScaling& scaling) {
  if (auto* ours = dynamic_cast<ho::OptimizerBase*>(&opt)) return ours->step(scaling);
  return dynamic_cast<ho::Lookahead&>(opt).step(scaling);
}

// Scale 1000 is not a power of two: the float32 reciprocal GradScaler uses
// must be the one applied, in both paths.
void expect_scaled_equals_unscaled(const Factory& make) {
  constexpr double kScale = 1000.0;
  const double inverse = static_cast<double>(static_cast<float>(1.0 / kScale));
  auto scaled_params = make_params(), plain_params = make_params();
  auto scaled = make(scaled_params), plain = make(plain_params);
  const auto scale = torch::tensor(kScale), no_inf = torch::tensor(0.0), inf = torch::tensor(1.0);
  for (int step = 0; step < 5; ++step) {
    set_grads(scaled_params, step, kScale);
    set_grads(plain_params, step, kScale);
    const bool skip = step == 2;
    const auto grads_before = scaled_params[1].grad().clone();
    scaled_step(*scaled, {scale, skip ? inf : no_inf});
    EXPECT_TRUE(torch::equal(scaled_params[1].grad(), grads_before)) << "gradients are not written";
    if (!skip) {
      for (const auto& p : plain_params) p.mutable_grad().mul_(inverse);
      plain->step();
    }
    for (size_t i = 0; i < plain_params.size(); ++i) {
      ASSERT_TRUE(torch::equal(scaled_params[i], plain_params[i])) << "step " << step << ", parameter " << i;
    }
  }
  std::ostringstream a, b;
  torch::save(*scaled, a);
  torch::save(*plain, b);
  EXPECT_EQ(a.str().size(), b.str().size());
}

TEST(Amp, LAMB) {
  expect_scaled_equals_unscaled([](auto p) { return std::make_shared<ho::LAMB>(p, ho::LAMBOptions(0.05)); });
}
TEST(Amp, LARS) {
  expect_scaled_equals_unscaled(
      [](auto p) { return std::make_shared<ho::LARS>(p, ho::LARSOptions(0.05).momentum(0.9)); });
}
TEST(Amp, RaLars) {
  expect_scaled_equals_unscaled([](auto p) { return std::make_shared<ho::RaLars>(p, ho::RaLarsOptions(0.05)); });
}
TEST(Amp, TAdam) {
  expect_scaled_equals_unscaled([](auto p) { return std::make_shared<ho::TAdam>(p, ho::TAdamOptions(0.05)); });
}
TEST(Amp, AdaBelief) {
  expect_scaled_equals_unscaled(
      [](auto p) { return std::make_shared<ho::AdaBelief>(p, ho::AdaBeliefOptions(0.05).amsgrad(true)); });
}
TEST(Amp, AdamP) {
  expect_scaled_equals_unscaled([](auto p) { return std::make_shared<ho::AdamP>(p, ho::AdamPOptions(0.05)); });
}
TEST(Amp, Adan) {
  expect_scaled_equals_unscaled(
      [](auto p) { return std::make_shared<ho::Adan>(p, ho::AdanOptions(0.05).weight_decay(0.01)); });
}
TEST(Amp, AdEMAMix) {
  expect_scaled_equals_unscaled([](auto p) { return std::make_shared<ho::AdEMAMix>(p, ho::AdEMAMixOptions(0.05)); });
}
TEST(Amp, ScoutAroundOurs) {
  expect_scaled_equals_unscaled([](auto p) {
    return std::make_shared<ho::Scout>(std::make_shared<ho::LAMB>(p, ho::LAMBOptions(0.05)),
                                       ho::ScoutOptions().sync_period(2));
  });
}

TEST(Amp, LookaheadAroundTorchAdamUnscalesTheGradientsFirst) {
  auto params = make_params();
  ho::Lookahead wrapper(std::make_shared<torch::optim::Adam>(params, torch::optim::AdamOptions(0.05)),
                        ho::LookaheadOptions().sync_period(2));
  set_grads(params, 0, 8.0);
  const auto unscaled = params[0].grad() / 8.0;
  wrapper.step({torch::tensor(8.0), torch::tensor(0.0)});
  EXPECT_TRUE(torch::equal(params[0].grad(), unscaled));
  wrapper.step({torch::tensor(8.0), torch::tensor(1.0)});  // skipped: the counter does not move
  EXPECT_EQ(wrapper.fast_steps(), 1);
}

TEST(Amp, BadScalingIsRefusedBeforeAnythingChanges) {
  auto params = make_params();
  ho::Adan opt(params, ho::AdanOptions(0.05));
  set_grads(params, 0, 1.0);
  const auto before = params[1].detach().clone();
  for (const auto& bad : {torch::tensor(0.0), torch::tensor(-1.0), torch::tensor(NAN), torch::ones({2})}) {
    expect_throw_naming([&] { opt.step({bad, torch::tensor(0.0)}); }, "grad_scale", "bad grad_scale");
    EXPECT_TRUE(torch::equal(params[1], before));
  }
  expect_throw_naming([&] { opt.step({torch::tensor(2.0), torch::ones({3})}); }, "found_inf", "bad found_inf");
  opt.step({torch::tensor(2.0), torch::tensor(0.0)});
  EXPECT_FALSE(torch::equal(params[1], before));
}

}  // namespace
}  // namespace holocron_test
