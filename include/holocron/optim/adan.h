#pragma once

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

struct AdanOptions : detail::OptionsBase<AdanOptions> {
  AdanOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(betas3_t, betas) = std::make_tuple(0.98, 0.92, 0.99);
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(bool, amsgrad) = false;

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("lr", self.lr());
    visit("betas", self.betas());
    visit("eps", self.eps());
    visit("weight_decay", self.weight_decay());
    visit("amsgrad", self.amsgrad());
  }
  functional::AdanHyper hyper() const;
};

struct AdanParamState : detail::ParamStateBase<AdanParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(torch::Tensor, exp_avg);
  TORCH_ARG(torch::Tensor, exp_avg_sq);
  TORCH_ARG(torch::Tensor, exp_avg_delta);
  TORCH_ARG(torch::Tensor, max_exp_avg_delta);
  TORCH_ARG(torch::Tensor, prev_grad);

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("step", self.step());
    visit("exp_avg", self.exp_avg());
    visit("exp_avg_sq", self.exp_avg_sq());
    visit("exp_avg_delta", self.exp_avg_delta());
    visit("max_exp_avg_delta", self.max_exp_avg_delta());
    visit("prev_grad", self.prev_grad());
  }
};

// Adan (Nesterov-accelerated adaptive moments). Fix 1: prev_grad is kept up to date.
class Adan : public detail::Algorithm<AdanOptions, AdanParamState> {
 public:
  explicit Adan(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdanOptions defaults = {});
  explicit Adan(std::vector<torch::Tensor> params, AdanOptions defaults = {});

 protected:
  void init_state(AdanParamState& state, const torch::Tensor& param,
                  const AdanOptions& options) const override;
  void update(const AdanOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<AdanParamState*>& states) override;
};

}  // namespace holocron::optim
