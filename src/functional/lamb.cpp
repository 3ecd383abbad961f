// LAMB and RaLars: checks, then the fused kernels or the reference backend.

#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

namespace {

void check_lamb_family(const char* name, double lr, double beta1, double beta2, double eps,
                       double weight_decay, const ScaleClip& clip) {
  check_non_negative(name, "lr", lr);
  check_beta(name, "betas[0]", beta1);
  check_beta(name, "betas[1]", beta2);
  check_non_negative(name, "eps", eps);
  // The reference accepts a negative weight decay here; torch refuses it and
  // so do we.
  check_non_negative(name, "weight_decay", weight_decay);
  check_hyper(name, "scale_clip[0]", clip.first, 0.0, true, INFINITY, false);
  check_hyper(name, "scale_clip[1]", clip.second, clip.first, true, INFINITY, true);
}

// The trust ratio of each tensor from ||p||^2 and ||u||^2 (over all shards).
std::vector<double> trust_ratios(const cpu::Sums& norms, const ScaleClip& clip) {
  std::vector<double> local_lrs(norms.size(), 1.0);
  for (size_t i = 0; i < norms.size(); ++i) {
    local_lrs[i] = trust_ratio(clamp_norm(std::sqrt(norms[i][0]), clip), std::sqrt(norms[i][1]));
  }
  return local_lrs;
}

// The fused kernels' two passes around the host phase. Pass 1 stores the
// float and double moments (pass 2 reads them), so a throwing all-reduce
// leaves them advanced; every check has run before it. The per-tensor rows
// (PerTensor of protocol::lamb or ::ralars) already hold the direction's
// coefficients; their step is set here, from the trust ratios.
template <typename PerTensor>
std::vector<double> fused_trust_step(cpu::Pass moments, cpu::Pass apply, FusedScratch& scratch,
                                     const char* name, double lr, const ScaleClip& clip,
                                     const Sharding& sharding) {
  cpu::run(moments, scratch.group, scratch.args, &scratch.sums);
  all_reduce_sums(name, sharding, scratch.sums, 2);
  auto local_lrs = trust_ratios(scratch.sums, clip);
  for (size_t i = 0; i < local_lrs.size(); ++i) {
    auto row = scratch.args.per_tensor[i].get<PerTensor>();
    row.step = -lr * local_lrs[i];
    scratch.args.per_tensor[i].set(row);
  }
  cpu::run(apply, scratch.group, scratch.args);
  return local_lrs;
}

}  // namespace

void check(const LambHyper& h) {
  check_lamb_family("LAMB", h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.scale_clip);
}

void check(const RaLarsHyper& h) {
  check_lamb_family("RaLars", h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.scale_clip);
  if (h.sma_inf) check_hyper("RaLars", "sma_inf", *h.sma_inf, -INFINITY, false, INFINITY, false);
}

std::vector<double> lamb_(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList exp_avg_sqs, const LambHyper& h, const GradScaling& scaling,
                          const Sharding& sharding) {
  check(h);
  check_group("LAMB", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  check_sharding("LAMB", sharding, params);
  const auto inv_grad_scale = grad_unscale("LAMB", scaling);
  if (!inv_grad_scale) return {};
  auto& scratch = fused_scratch();
  const cpu::protocol::lamb::Arrays<TensorList> arrays{
      .param = params, .grad = grads, .exp_avg = exp_avgs, .exp_avg_sq = exp_avg_sqs};
  if (!fused_group(scratch.group, params, arrays)) {
    const auto g = unscaled_grads(grads, *inv_grad_scale);
    auto norms = kernels::reference::lamb_sums(params, g, exp_avgs, exp_avg_sqs, h);
    all_reduce_sums("LAMB", sharding, norms, 2);
    const auto local_lrs = trust_ratios(norms, h.scale_clip);
    kernels::reference::lamb(params, g, exp_avgs, exp_avg_sqs, h, local_lrs);
    return local_lrs;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(cpu::protocol::lamb::Constants{
      .beta1 = h.beta1, .beta2 = h.beta2, .eps = h.eps, .weight_decay = h.weight_decay});
  // The step is known after pass 1 (fused_trust_step).
  for (auto& row : args.per_tensor) row.set(cpu::protocol::lamb::PerTensor{.step = 0.0});
  auto local_lrs = fused_trust_step<cpu::protocol::lamb::PerTensor>(
      cpu::Pass::LambMoments, cpu::Pass::LambApply, scratch, "LAMB", h.lr, h.scale_clip, sharding);
  mark_written({params, exp_avgs, exp_avg_sqs});
  return local_lrs;
}

std::vector<double> ralars_(TensorList params, TensorList grads, TensorList exp_avgs,
                            TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                            const RaLarsHyper& h, const GradScaling& scaling,
                            const Sharding& sharding) {
  check(h);
  check_group("RaLars", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  check_steps("RaLars", steps, params.size());
  check_sharding("RaLars", sharding, params);
  const auto inv_grad_scale = grad_unscale("RaLars", scaling);
  if (!inv_grad_scale) return {};
  auto& scratch = fused_scratch();
  const cpu::protocol::ralars::Arrays<TensorList> arrays{
      .param = params, .grad = grads, .exp_avg = exp_avgs, .exp_avg_sq = exp_avg_sqs};
  if (!fused_group(scratch.group, params, arrays)) {
    const auto g = unscaled_grads(grads, *inv_grad_scale);
    auto norms = kernels::reference::ralars_sums(params, g, exp_avgs, exp_avg_sqs, steps, h);
    all_reduce_sums("RaLars", sharding, norms, 2);
    const auto local_lrs = trust_ratios(norms, h.scale_clip);
    kernels::reference::ralars(params, g, exp_avgs, exp_avg_sqs, steps, h, local_lrs);
    return local_lrs;
  }
  const double sma_inf = h.sma_inf.value_or(2.0 / (1.0 - h.beta2) - 1.0);
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(cpu::protocol::ralars::Constants{
      .beta1 = h.beta1, .beta2 = h.beta2, .eps = h.eps, .weight_decay = h.weight_decay});
  using Mode = cpu::protocol::ralars::Mode;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto t = static_cast<double>(steps[i]);
    const double bc1 = bias_correction(h.beta1, steps[i]);
    const double bc2 = bias_correction(h.beta2, steps[i]);
    const auto r = ralars_rectification(sma_inf, t, bc2);
    args.per_tensor[i].set(cpu::protocol::ralars::PerTensor{
        .inv_bc1 = 1.0 / bc1,
        .inv_bc2 = 1.0 / bc2,
        .rectification = r.value_or(1.0),
        .mode = r ? Mode::kRectified : h.force_adaptive_momentum ? Mode::kAdaptive : Mode::kMomentum,
        .step = 0.0});
  }
  auto local_lrs = fused_trust_step<cpu::protocol::ralars::PerTensor>(
      cpu::Pass::RaLarsMoments, cpu::Pass::RaLarsApply, scratch, "RaLars", h.lr, h.scale_clip, sharding);
  mark_written({params, exp_avgs, exp_avg_sqs});
  return local_lrs;
}

}  // namespace holocron::optim::functional
