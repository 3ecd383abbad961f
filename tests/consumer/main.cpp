// Trains a tiny linear model with each optimizer under StepLR, checkpoints
// halfway, resumes into fresh objects and checks that the resumed run equals
// the uninterrupted one bit for bit. Exits non-zero otherwise.

#include <holocron/optim.h>
#include <torch/optim/schedulers/step_lr.h>
#include <torch/serialize.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace ho = holocron::optim;
using Factory = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

constexpr int kSteps = 12;
constexpr int kCheckpoint = 6;

struct Linear {
  torch::Tensor weight, bias;
  std::vector<torch::Tensor> params() const { return {weight, bias}; }
};

Linear make_model() {
  torch::manual_seed(0);
  return {torch::randn({2, 3}).set_requires_grad(true), torch::zeros({2}).set_requires_grad(true)};
}

void train_step(const Linear& m, torch::optim::Optimizer& opt, int step) {
  torch::manual_seed(100 + step);
  const auto x = torch::randn({16, 3});
  const auto y = x.sum(1, true).repeat({1, 2});
  opt.zero_grad();
  torch::mse_loss(torch::matmul(x, m.weight.t()) + m.bias, y).backward();
  opt.step();
}

bool check(const std::string& name, const Factory& make) {
  // Uninterrupted.
  auto full = make_model();
  auto full_opt = make(full.params());
  torch::optim::StepLR full_sched(*full_opt, 3, 0.5);
  for (int k = 0; k < kSteps; ++k) {
    train_step(full, *full_opt, k);
    full_sched.step();
  }

  // Interrupted at kCheckpoint.
  auto first = make_model();
  auto first_opt = make(first.params());
  torch::optim::StepLR first_sched(*first_opt, 3, 0.5);
  for (int k = 0; k < kCheckpoint; ++k) {
    train_step(first, *first_opt, k);
    first_sched.step();
  }
  std::stringstream checkpoint;
  torch::save(*first_opt, checkpoint);

  Linear resumed{first.weight.detach().clone().set_requires_grad(true),
                 first.bias.detach().clone().set_requires_grad(true)};
  auto resumed_opt = make(resumed.params());
  torch::optim::StepLR resumed_sched(*resumed_opt, 3, 0.5);
  for (int k = 0; k < kCheckpoint; ++k) resumed_sched.step();  // its step count only
  torch::load(*resumed_opt, checkpoint);
  const double lr = resumed_opt->param_groups()[0].options().get_lr();
  const double expected_lr = first_opt->param_groups()[0].options().get_lr();
  for (int k = kCheckpoint; k < kSteps; ++k) {
    train_step(resumed, *resumed_opt, k);
    resumed_sched.step();
  }

  const bool moved = !torch::equal(full.weight, make_model().weight);
  const bool same = torch::equal(full.weight, resumed.weight) && torch::equal(full.bias, resumed.bias);
  const bool ok = moved && same && lr == expected_lr;
  std::printf("%-10s %s (moved=%d bitwise=%d lr=%g)\n", name.c_str(), ok ? "ok" : "FAILED", moved,
              same, lr);
  return ok;
}

}  // namespace

int main() {
  const std::vector<std::pair<std::string, Factory>> runs = {
      {"LARS", [](auto p) { return std::make_unique<ho::LARS>(p, ho::LARSOptions(0.1).momentum(0.9)); }},
      {"LAMB", [](auto p) { return std::make_unique<ho::LAMB>(p, ho::LAMBOptions(0.05)); }},
      {"RaLars", [](auto p) { return std::make_unique<ho::RaLars>(p, ho::RaLarsOptions(0.05)); }},
      {"TAdam", [](auto p) { return std::make_unique<ho::TAdam>(p, ho::TAdamOptions(0.05).amsgrad(true)); }},
      {"AdaBelief", [](auto p) { return std::make_unique<ho::AdaBelief>(p, ho::AdaBeliefOptions(0.05)); }},
      {"AdamP", [](auto p) { return std::make_unique<ho::AdamP>(p, ho::AdamPOptions(0.05)); }},
      {"Adan", [](auto p) { return std::make_unique<ho::Adan>(p, ho::AdanOptions(0.05).weight_decay(0.01)); }},
      {"AdEMAMix", [](auto p) { return std::make_unique<ho::AdEMAMix>(p, ho::AdEMAMixOptions(0.01)); }},
      {"Lookahead", [](auto p) {
         return std::make_unique<ho::Lookahead>(std::make_shared<ho::LAMB>(p, ho::LAMBOptions(0.05)),
                                                ho::LookaheadOptions().sync_period(4));
       }},
  };
  int failures = 0;
  for (const auto& [name, make] : runs) failures += check(name, make) ? 0 : 1;
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
