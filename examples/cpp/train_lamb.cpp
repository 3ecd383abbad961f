// Trains a small regression MLP with LAMB (no weight decay on biases) under a
// StepLR schedule, saves a checkpoint halfway, resumes from it into new
// objects as a restarted program would, and checks that the resumed run ends
// exactly where an uninterrupted one does.
//
// usage: train_lamb CHECKPOINT_PATH

#include <torch/nn.h>
#include <torch/optim/schedulers/step_lr.h>
#include <torch/serialize.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <holocron/optim.h>

namespace {

namespace ho = holocron::optim;

constexpr int kSteps = 200;
constexpr int kStepsBeforeCheckpoint = 100;

struct MlpImpl : torch::nn::Module {
  MlpImpl() : hidden(register_module("hidden", torch::nn::Linear(8, 32))),
              out(register_module("out", torch::nn::Linear(32, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) { return out->forward(torch::tanh(hidden->forward(x))); }
  torch::nn::Linear hidden, out;
};
TORCH_MODULE(Mlp);

struct Run {
  Mlp model;
  std::shared_ptr<ho::LAMB> optimizer;
  std::unique_ptr<torch::optim::StepLR> scheduler;
};

// [make-optimizer]
Run make_run() {
  torch::manual_seed(0);
  Mlp model;
  std::vector<torch::Tensor> weights, biases;
  for (const auto& item : model->named_parameters())
    (item.key().find("bias") != std::string::npos ? biases : weights).push_back(item.value());

  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(weights);  // takes the defaults below
  groups.emplace_back(biases, std::make_unique<ho::LAMBOptions>(ho::LAMBOptions(1e-1).weight_decay(0.0)));
  auto optimizer = std::make_shared<ho::LAMB>(groups, ho::LAMBOptions(1e-1).weight_decay(1e-2));
  auto scheduler = std::make_unique<torch::optim::StepLR>(*optimizer, /*step_size=*/50, /*gamma=*/0.5);
  return {model, optimizer, std::move(scheduler)};
}
// [make-optimizer]

double train(Run& run, int first_step, int last_step) {
  double loss_value = 0.0;
  for (int step = first_step; step < last_step; ++step) {
    torch::manual_seed(1000 + step);  // the batch depends on the step only
    const auto x = torch::randn({64, 8});
    const auto y = torch::sin(x.sum(1, true));
    // [train-step]
    run.optimizer->zero_grad();
    auto loss = torch::mse_loss(run.model->forward(x), y);
    loss.backward();
    run.optimizer->step();
    run.scheduler->step();
    // [train-step]
    loss_value = loss.item<double>();
  }
  return loss_value;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_PATH\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];

  auto uninterrupted = make_run();
  const double first_loss = train(uninterrupted, 0, 1);
  const double final_loss = train(uninterrupted, 1, kSteps);

  auto first_half = make_run();
  train(first_half, 0, kStepsBeforeCheckpoint);
  // [checkpoint]
  torch::save(first_half.model, path + ".model");
  torch::save(*first_half.optimizer, path);  // state, and every group's options (the scheduled lr)
  // [checkpoint]

  auto resumed = make_run();
  // [resume]
  torch::load(resumed.model, path + ".model");
  // LibTorch's StepLR keeps only a step count, which is not saved: advance
  // it first, then the load restores the scheduled lr with the rest.
  for (int step = 0; step < kStepsBeforeCheckpoint; ++step) resumed.scheduler->step();
  torch::load(*resumed.optimizer, path);  // checked whole before anything is replaced
  // [resume]
  train(resumed, kStepsBeforeCheckpoint, kSteps);

  bool same = true;
  const auto expected = uninterrupted.model->parameters();
  const auto actual = resumed.model->parameters();
  for (size_t i = 0; i < expected.size(); ++i) same = same && torch::equal(expected[i], actual[i]);
  const double lr = resumed.optimizer->param_groups()[0].options().get_lr();
  std::printf("LAMB: loss %.4f -> %.4f in %d steps, lr now %g; resumed run %s the uninterrupted one\n",
              first_loss, final_loss, kSteps, lr, same ? "equals" : "DIFFERS FROM");
  return same && final_loss < first_loss ? 0 : 1;
}
