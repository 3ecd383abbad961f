#pragma once

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

struct RaLarsOptions : detail::OptionsBase<RaLarsOptions> {
  RaLarsOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(betas2_t, betas) = std::make_tuple(0.9, 0.999);
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(bool, force_adaptive_momentum) = false;
  TORCH_ARG(scale_clip_t, scale_clip) = std::nullopt;

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("lr", self.lr());
    visit("betas", self.betas());
    visit("eps", self.eps());
    visit("weight_decay", self.weight_decay());
    visit("force_adaptive_momentum", self.force_adaptive_momentum());
    visit("scale_clip", self.scale_clip());
  }
  functional::RaLarsHyper hyper() const;
};

struct RaLarsParamState : detail::ParamStateBase<RaLarsParamState> {
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

// Rectified Adam with LARS trust ratios. `scale_clip`: none means (0, 10).
class RaLars : public detail::Algorithm<RaLarsOptions, RaLarsParamState> {
 public:
  explicit RaLars(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      RaLarsOptions defaults = {});
  explicit RaLars(std::vector<torch::Tensor> params, RaLarsOptions defaults = {});

 protected:
  void init_state(RaLarsParamState& state, const torch::Tensor& param,
                  const RaLarsOptions& options) const override;
  void update(const RaLarsOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<RaLarsParamState*>& states) override;
};

}  // namespace holocron::optim
