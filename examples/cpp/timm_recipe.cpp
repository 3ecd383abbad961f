// A timm recipe in C++: create_optimizer("lamb", model, ...) makes timm's LAMB
// (bias correction, gradient clipping at norm 1, biases and norms out of weight
// decay and of the trust ratio) over the model's parameters, as timm's
// create_optimizer_v2(model, "lamb", lr=..., weight_decay=...) does in Python.
// Trains a small regression model and checks that the loss falls.
//
// usage: timm_recipe

#include <torch/nn.h>

#include <cstdio>
#include <memory>

#include <holocron/optim.h>

namespace {

namespace ho = holocron::optim;

struct NetImpl : torch::nn::Module {
  NetImpl() : hidden(register_module("hidden", torch::nn::Linear(8, 32))),
              norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({32})))),
              out(register_module("out", torch::nn::Linear(32, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return out->forward(torch::tanh(norm->forward(hidden->forward(x))));
  }
  torch::nn::Linear hidden;
  torch::nn::LayerNorm norm;
  torch::nn::Linear out;
};
TORCH_MODULE(Net);

}  // namespace

int main() {
  torch::manual_seed(0);
  Net model;
  // [create-optimizer]
  ho::FactoryOptions options;
  options.lr = 1e-2;
  options.weight_decay = 0.05;
  auto optimizer = ho::create_optimizer("lamb", *model, options);
  // [create-optimizer]
  // timm's grouping: biases and the norm's parameters without weight decay, then the weights.
  const auto& groups = optimizer->param_groups();
  const auto decay = [&](size_t i) { return static_cast<const ho::LAMBOptions&>(groups[i].options()).weight_decay(); };
  if (groups.size() != 2 || groups[0].params().size() != 4 || decay(0) != 0.0 || decay(1) != 0.05) {
    std::fprintf(stderr, "unexpected parameter groups\n");
    return 1;
  }

  const auto x = torch::randn({256, 8});
  const auto y = torch::sin(x.sum(1, true));
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 300; ++step) {
    optimizer->zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    optimizer->step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  std::printf("lamb via create_optimizer: loss %.4f -> %.4f\n", first, last);
  if (!(last < 0.5 * first)) {
    std::fprintf(stderr, "the loss did not fall\n");
    return 1;
  }
  return 0;
}
