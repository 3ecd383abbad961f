// The squared norms of the unscaled gradients, from which global gradient-norm
// clipping (max_grad_norm) takes its one norm over every group: the
// functional function and its operator. The clipping itself is GradScaling's
// (functional/common.cpp: the gradients are divided as they are read).

#include "algorithms/common.h"

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

std::vector<double> grad_squared_norms(TensorList grads, const GradScaling& scaling,
                                       const Sharding& sharding) {
  check_group("grad_squared_norms", grads, grads, {}, /*params_written=*/false);  // read only
  check_sharding("grad_squared_norms", sharding, grads);
  const auto inv_grad_scale =
      grad_unscale("grad_squared_norms", GradScaling(scaling.grad_scale, scaling.found_inf));
  // A skipped step reads nothing; its partial sums still join the all-reduce, which
  // every shard's process enters.
  cpu::Sums sums(grads.size(), cpu::Sums::value_type{});
  if (inv_grad_scale) {
    auto& scratch = fused_scratch();
    if (fused_group(scratch.group, grads, cpu::protocol::grad_norm::Arrays<TensorList>{.grad = grads})) {
      auto& args = scratch.fresh_args(grads.size());
      args.inv_grad_scale = *inv_grad_scale;
      cpu::run(cpu::Pass::GradNorms, scratch.group, args, &sums);
    } else {
      const auto unscaled = unscaled_grads(grads, *inv_grad_scale);
      for (size_t i = 0; i < grads.size(); ++i) sums[i][0] = squared_norm_of(unscaled[i]);
    }
  }
  all_reduce_sums("grad_squared_norms", sharding, sums, 1);
  std::vector<double> out(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) out[i] = sums[i][0];
  return out;
}

}  // namespace holocron::optim::functional

// ---- The operator (torch.ops.holocron) ------------------------------------------

namespace holocron::optim::ops {
namespace {

// `params` only give the gradients' expected shapes and the shards' layout.
c10::IValue grad_squared_norms(const Arguments& a) {
  const auto params = a.params();
  const auto grads = a.tensors("grads");
  F::detail::check_group("grad_squared_norms", params, grads, {});
  const auto sums = F::grad_squared_norms(grads, a.scaling(), a.sharding(params));
  auto out = at::tensor(c10::ArrayRef<double>(sums), at::TensorOptions().dtype(at::kDouble));
  return params.empty() ? out : out.to(params[0].device());
}

}  // namespace

HOLOCRON_OPTIM_OP("grad_squared_norms(Tensor[] params, Tensor[] grads, " HOLOCRON_SCALING
                  ", " HOLOCRON_SHARDING ") -> Tensor",
                  &grad_squared_norms)

}  // namespace holocron::optim::ops
