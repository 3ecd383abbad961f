#pragma once

// Cautious Optimizers (Kaizhao Liang et al., "Cautious Optimizers: Improving Training with One Line
// of Code", 2024, arXiv 2411.16085), for the algorithms whose peers define it: the first moment
// enters the update only where it agrees in sign with the gradient, rescaled by how much of the
// tensor agrees. The count is a whole-tensor sum: one more read of the gradient and the first
// moment before the update (the mask itself is recomputed where it is applied).

#include <algorithm>
#include <vector>

#include "algorithms/common.h"

namespace holocron::optim::functional::detail {

// How a peer rescales the kept elements, from their number `kept` among `numel`.
enum class CautionScale {
  kTimm,              // mask / max(mean(mask), 1e-3)
  kPytorchOptimizer,  // mask * numel / (sum(mask) + 1)
};

inline double caution_scale(CautionScale rule, double kept, double numel) {
  if (rule == CautionScale::kTimm) return 1.0 / std::max(kept / numel, 1e-3);
  return numel / (kept + 1.0);
}

// Per tensor, the factor its kept elements are multiplied by: kept where
// m' = beta1 * m + grad_weight * g' agrees in sign with g' = g + weight_decay * p (g unscaled:
// `inv_grad_scale` is grad_unscale's), counted over every shard.
inline std::vector<double> caution_scales_of(const char* optimizer, CautionScale rule, TensorList params,
                                          TensorList grads, TensorList exp_avgs, double beta1,
                                          double grad_weight, double weight_decay, double inv_grad_scale,
                                          const Sharding& sharding) {
  namespace cpu = kernels::cpu;
  auto& scratch = fused_scratch();
  auto& counts = scratch.sums;
  if (fused_group(scratch.second_group, params,
                  cpu::protocol::caution::Arrays<TensorList>{
                      .grad = grads, .exp_avg = exp_avgs, .param = if_used(weight_decay != 0.0, params)})) {
    auto& args = scratch.fresh_args(params.size());
    args.inv_grad_scale = inv_grad_scale;
    args.constants.set(cpu::protocol::caution::Constants{
        .beta1 = beta1, .grad_weight = grad_weight, .weight_decay = weight_decay});
    cpu::run(cpu::Pass::CautionCount, scratch.second_group, args, &counts);
  } else {
    const auto unscaled = unscaled_grads(grads, inv_grad_scale);
    counts.assign(params.size(), cpu::Sums::value_type{});
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].numel() == 0) continue;
      ComputeScope scope(params[i]);
      const auto g = decayed_grad(scope.in(unscaled[i]), scope.in(params[i]), weight_decay);
      const auto m = scope.in(exp_avgs[i]) * beta1 + g * grad_weight;
      counts[i][0] = (m * g > 0).sum(at::kDouble).item<double>();
    }
  }
  all_reduce_sums(optimizer, sharding, counts, 1);
  std::vector<double> scales(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    scales[i] = caution_scale(rule, counts[i][0], static_cast<double>(whole_numel(sharding, params, i)));
  }
  return scales;
}

}  // namespace holocron::optim::functional::detail
