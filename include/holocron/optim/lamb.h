#pragma once

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

struct LAMBOptions : detail::OptionsBase<LAMBOptions> {
  LAMBOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(betas2_t, betas) = std::make_tuple(0.9, 0.999);
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(scale_clip_t, scale_clip) = std::nullopt;

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("lr", self.lr());
    visit("betas", self.betas());
    visit("eps", self.eps());
    visit("weight_decay", self.weight_decay());
    visit("scale_clip", self.scale_clip());
  }
  functional::LambHyper hyper() const;
};

struct LAMBParamState : detail::ParamStateBase<LAMBParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(torch::Tensor, exp_avg);
  TORCH_ARG(torch::Tensor, exp_avg_sq);
  TORCH_ARG(double, local_lr) = 1.0;

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("step", self.step());
    visit("exp_avg", self.exp_avg());
    visit("exp_avg_sq", self.exp_avg_sq());
    visit("local_lr", self.local_lr());
  }
};

// LAMB. `scale_clip` bounds ||p|| in the trust ratio; none means (0, 10).
class LAMB : public detail::Algorithm<LAMBOptions, LAMBParamState> {
 public:
  explicit LAMB(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      LAMBOptions defaults = {});
  explicit LAMB(std::vector<torch::Tensor> params, LAMBOptions defaults = {});

 protected:
  void init_state(LAMBParamState& state, const torch::Tensor& param,
                  const LAMBOptions& options) const override;
  void update(const LAMBOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<LAMBParamState*>& states) override;
};

}  // namespace holocron::optim
