#pragma once

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

#include "holocron/optim/detail/optimizer_base.h"
#include "holocron/optim/functional.h"

namespace holocron::optim {

struct LARSOptions : detail::OptionsBase<LARSOptions> {
  LARSOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's AdamOptions
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, momentum) = 0.0;
  TORCH_ARG(double, dampening) = 0.0;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(bool, nesterov) = false;
  TORCH_ARG(scale_clip_t, scale_clip) = std::nullopt;

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("lr", self.lr());
    visit("momentum", self.momentum());
    visit("dampening", self.dampening());
    visit("weight_decay", self.weight_decay());
    visit("nesterov", self.nesterov());
    visit("scale_clip", self.scale_clip());
  }
  functional::LarsHyper hyper() const;
};

struct LARSParamState : detail::ParamStateBase<LARSParamState> {
  TORCH_ARG(torch::Tensor, momentum_buffer);
  TORCH_ARG(double, local_lr) = 1.0;

 public:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("momentum_buffer", self.momentum_buffer());
    visit("local_lr", self.local_lr());
  }
};

// Layer-wise Adaptive Rate Scaling. `scale_clip`, when given, bounds ||p|| in the
// trust ratio (fix 3); without it the norm is used as is, as in the reference.
class LARS : public detail::Algorithm<LARSOptions, LARSParamState> {
 public:
  explicit LARS(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      LARSOptions defaults = {});
  explicit LARS(std::vector<torch::Tensor> params, LARSOptions defaults = {});

 protected:
  void init_state(LARSParamState& state, const torch::Tensor& param,
                  const LARSOptions& options) const override;
  void update(const LARSOptions& options, const std::vector<torch::Tensor>& params,
              const std::vector<torch::Tensor>& grads,
              const std::vector<LARSParamState*>& states) override;
};

}  // namespace holocron::optim
