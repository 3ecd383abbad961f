#pragma once

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

struct AdEMAMixOptions : detail::OptionsBase<AdEMAMixOptions> {
  AdEMAMixOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(betas3_t, betas) = std::make_tuple(0.9, 0.999, 0.9999);
  TORCH_ARG(double, alpha) = 5.0;
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0.0;

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("lr", self.lr());
    visit("betas", self.betas());
    visit("alpha", self.alpha());
    visit("eps", self.eps());
    visit("weight_decay", self.weight_decay());
  }
  functional::AdEMAMixHyper hyper() const;
};

struct AdEMAMixParamState : detail::ParamStateBase<AdEMAMixParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(torch::Tensor, exp_avg);
  TORCH_ARG(torch::Tensor, exp_avg_slow);
  TORCH_ARG(torch::Tensor, exp_avg_sq);

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("step", self.step());
    visit("exp_avg", self.exp_avg());
    visit("exp_avg_slow", self.exp_avg_slow());
    visit("exp_avg_sq", self.exp_avg_sq());
  }
};

// AdEMAMix: Adam with a second, slow moving average of gradients.
class AdEMAMix : public detail::Algorithm<AdEMAMixOptions, AdEMAMixParamState> {
 public:
  explicit AdEMAMix(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdEMAMixOptions defaults = {});
  explicit AdEMAMix(std::vector<torch::Tensor> params, AdEMAMixOptions defaults = {});

 protected:
  void init_state(AdEMAMixParamState& state, const torch::Tensor& param,
                  const AdEMAMixOptions& options) const override;
  void update(const AdEMAMixOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<AdEMAMixParamState*>& states) override;
};

}  // namespace holocron::optim
