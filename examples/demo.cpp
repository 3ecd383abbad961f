// Trains the same small regression MLP with each optimizer and prints, per
// optimizer, the loss before and after training and the time per step.

#include <torch/nn.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <utility>
#include <memory>
#include <string>
#include <vector>

#include <holocron/optim.h>

namespace {

using holocron::optim::LookaheadOptions;
using OptimizerFactory =
    std::function<std::shared_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

struct Net : torch::nn::Module {
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(16, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2->forward(torch::tanh(fc1->forward(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

void train(const std::string& name, const OptimizerFactory& make) {
  torch::manual_seed(0);
  const auto inputs = torch::randn({256, 16});
  const auto targets = (inputs.slice(1, 0, 4).sum(1, true) - inputs.slice(1, 4, 8).pow(2).mean(1, true));
  auto net = std::make_shared<Net>();
  auto optimizer = make(net->parameters());
  const auto loss_now = [&] { return torch::mse_loss(net->forward(inputs), targets); };
  const double before = loss_now().item<double>();

  constexpr int kSteps = 300;
  double step_ms = 0.0;
  for (int i = 0; i < kSteps; ++i) {
    optimizer->zero_grad();
    loss_now().backward();
    const auto start = std::chrono::steady_clock::now();
    optimizer->step();
    step_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
  std::printf("%-16s loss %.4f -> %.4f   %.4f ms/step\n", name.c_str(), before,
              loss_now().item<double>(), step_ms / kSteps);
}

}  // namespace

int main() {
  namespace ho = holocron::optim;
  const std::vector<std::pair<std::string, OptimizerFactory>> runs = {
      {"LARS", [](auto p) { return std::make_shared<ho::LARS>(p, ho::LARSOptions(5e-3).momentum(0.9)); }},
      {"LAMB", [](auto p) { return std::make_shared<ho::LAMB>(p, ho::LAMBOptions(5e-3)); }},
      {"RaLars", [](auto p) { return std::make_shared<ho::RaLars>(p, ho::RaLarsOptions(5e-3)); }},
      {"TAdam", [](auto p) { return std::make_shared<ho::TAdam>(p, ho::TAdamOptions(5e-3)); }},
      {"AdaBelief", [](auto p) { return std::make_shared<ho::AdaBelief>(p, ho::AdaBeliefOptions(5e-3)); }},
      {"AdamP", [](auto p) { return std::make_shared<ho::AdamP>(p, ho::AdamPOptions(5e-3)); }},
      {"Adan", [](auto p) { return std::make_shared<ho::Adan>(p, ho::AdanOptions(5e-3)); }},
      {"AdEMAMix", [](auto p) { return std::make_shared<ho::AdEMAMix>(p, ho::AdEMAMixOptions(5e-3)); }},
      {"Lookahead(Adam)",
       [](auto p) {
         return std::make_shared<ho::Lookahead>(
             std::make_shared<torch::optim::Adam>(p, torch::optim::AdamOptions(5e-3)), LookaheadOptions());
       }},
      {"Scout(LAMB)",
       [](auto p) {
         return std::make_shared<ho::Scout>(std::make_shared<ho::LAMB>(p, ho::LAMBOptions(5e-3)),
                                            ho::ScoutOptions());
       }},
  };
  for (const auto& [name, make] : runs) train(name, make);
  return 0;
}
