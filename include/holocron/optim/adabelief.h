#pragma once

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

struct AdaBeliefOptions : detail::OptionsBase<AdaBeliefOptions> {
  AdaBeliefOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(betas2_t, betas) = std::make_tuple(0.9, 0.999);
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
  functional::AdaBeliefHyper hyper() const;
};

struct AdaBeliefParamState : detail::ParamStateBase<AdaBeliefParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(torch::Tensor, exp_avg);
  TORCH_ARG(torch::Tensor, exp_avg_sq);
  TORCH_ARG(torch::Tensor, max_exp_avg_sq);

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("step", self.step());
    visit("exp_avg", self.exp_avg());
    visit("exp_avg_sq", self.exp_avg_sq());
    visit("max_exp_avg_sq", self.max_exp_avg_sq());
  }
};

// AdaBelief: Adam whose second moment tracks the gradient's deviation from its mean.
class AdaBelief : public detail::Algorithm<AdaBeliefOptions, AdaBeliefParamState> {
 public:
  explicit AdaBelief(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdaBeliefOptions defaults = {});
  explicit AdaBelief(std::vector<torch::Tensor> params, AdaBeliefOptions defaults = {});

 protected:
  void init_state(AdaBeliefParamState& state, const torch::Tensor& param,
                  const AdaBeliefOptions& options) const override;
  void update(const AdaBeliefOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<AdaBeliefParamState*>& states) override;
};

}  // namespace holocron::optim
