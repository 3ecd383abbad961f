// TAdam, AdaBelief, AdamP, Adan and AdEMAMix: checks, then the fused kernels or
// the reference backend. Per-tensor coefficients are computed here, in double.

#include "functional/common.h"
#include "kernels/reference/reference.h"

namespace holocron::optim::functional {

using namespace detail;
namespace cpu = kernels::cpu;

namespace {

constexpr double kCosineEps = 1e-8;  // torch.nn.functional.cosine_similarity's default

TensorList if_used(bool used, TensorList list) { return used ? list : TensorList{}; }

}  // namespace

void check(const TAdamHyper& h) {
  check_adam_like("TAdam", h.lr, {h.beta1, h.beta2}, h.eps, h.weight_decay);
  // dof = 0 turns a step whose gradient equals the mean into inf / inf (NaN
  // weights, NaN parameters); the reference accepts it.
  if (h.dof) check_hyper("TAdam", "dof", *h.dof, 0.0, false, INFINITY, false);
}

void check(const AdaBeliefHyper& h) {
  check_adam_like("AdaBelief", h.lr, {h.beta1, h.beta2}, h.eps, h.weight_decay);
}

void check(const AdamPHyper& h) {
  check_adam_like("AdamP", h.lr, {h.beta1, h.beta2}, h.eps, h.weight_decay);
  check_hyper("AdamP", "delta", h.delta, -INFINITY, false, INFINITY, false);
}

void check(const AdanHyper& h) {
  check_adam_like("Adan", h.lr, {h.beta1, h.beta2, h.beta3}, h.eps, h.weight_decay);
}

void check(const AdEMAMixHyper& h) {
  check_non_negative("AdEMAMix", "lr", h.lr);
  check_beta("AdEMAMix", "betas[0]", h.beta1);
  check_beta("AdEMAMix", "betas[1]", h.beta2);
  check_beta("AdEMAMix", "betas[2]", h.beta3);
  check_hyper("AdEMAMix", "alpha", h.alpha, -INFINITY, false, INFINITY, false);
  check_non_negative("AdEMAMix", "eps", h.eps);
  // The reference accepts a negative weight decay here; torch refuses it and
  // so do we.
  check_non_negative("AdEMAMix", "weight_decay", h.weight_decay);
}

void tadam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, std::vector<double>& moment_weights,
            c10::ArrayRef<int64_t> steps, const TAdamHyper& h, const GradScaling& scaling,
            const Sharding& sharding) {
  check(h);
  check_group("TAdam", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  if (h.amsgrad) check_group("TAdam", params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}});
  check_steps("TAdam", steps, params.size());
  check_sharding("TAdam", sharding, params);
  TORCH_CHECK(moment_weights.size() == params.size(), "TAdam: got ", moment_weights.size(),
              " moment weights for ", params.size(), " parameters");
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_sqs);
  const auto inv_grad_scale = grad_unscale("TAdam", scaling);
  if (!inv_grad_scale) return;
  auto& scratch = fused_scratch();
  namespace tadam = cpu::protocol::tadam;
  const bool fused =
      fused_group(scratch.second_group, params,
                  tadam::DistanceArrays<TensorList>{.grad = grads,
                                                    .exp_avg = exp_avgs,
                                                    .exp_avg_sq = exp_avg_sqs,
                                                    .param = if_used(h.weight_decay != 0.0, params)}) &&
      fused_group(scratch.group, params,
                  tadam::ApplyArrays<TensorList>{.param = params,
                                                 .grad = grads,
                                                 .exp_avg = exp_avgs,
                                                 .exp_avg_sq = exp_avg_sqs,
                                                 .max_exp_avg_sq = maxima});
  const auto reference_grads = fused ? std::vector<at::Tensor>{} : unscaled_grads(grads, *inv_grad_scale);
  auto& distances = scratch.sums;
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  if (fused) {
    args.constants.set(tadam::DistanceConstants{.eps = h.eps, .weight_decay = h.weight_decay});
    cpu::run(cpu::Pass::TAdamDistance, scratch.second_group, args, &distances);
  } else {
    distances = kernels::reference::tadam_sums(params, reference_grads, exp_avgs, exp_avg_sqs, h);
  }
  all_reduce_sums("TAdam", sharding, distances, 1);

  args.constants.set(
      tadam::ApplyConstants{.beta2 = h.beta2, .eps = h.eps, .weight_decay = h.weight_decay, .amsgrad = h.amsgrad});
  std::vector<std::array<double, 2>> mixing(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = whole_numel(sharding, params, i);
    if (numel == 0) continue;  // nothing to weigh: W stays
    const double w = tadam_weight(h.dof, numel, distances[i][0]);
    double& W = moment_weights[i];
    mixing[i] = {W / (W + w), w / (W + w)};
    args.per_tensor[i].set(tadam::ApplyPerTensor{.keep = mixing[i][0],
                                                 .take = mixing[i][1],
                                                 .inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                                                 .step = -h.lr / bias_correction(h.beta1, steps[i])});
    W = next_moment_weight(W, h.beta1, w, params[i].scalar_type());
  }
  if (!fused) {
    kernels::reference::tadam(params, reference_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                              mixing, steps, h);
    return;
  }
  cpu::run(cpu::Pass::TAdamApply, scratch.group, args);
  mark_written({params, exp_avgs, exp_avg_sqs, maxima});
}

void adabelief_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                const AdaBeliefHyper& h, const GradScaling& scaling) {
  check(h);
  check_group("AdaBelief", params, grads,
              {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  if (h.amsgrad) check_group("AdaBelief", params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}});
  check_steps("AdaBelief", steps, params.size());
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_sqs);
  const auto inv_grad_scale = grad_unscale("AdaBelief", scaling);
  if (!inv_grad_scale) return;
  auto& scratch = fused_scratch();
  namespace adabelief = cpu::protocol::adabelief;
  if (!fused_group(scratch.group, params,
                   adabelief::Arrays<TensorList>{.param = params,
                                                 .grad = grads,
                                                 .exp_avg = exp_avgs,
                                                 .exp_avg_sq = exp_avg_sqs,
                                                 .max_exp_avg_sq = maxima})) {
    kernels::reference::adabelief(params, unscaled_grads(grads, *inv_grad_scale),
                                  exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, h);
    return;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(adabelief::Constants{
      .beta1 = h.beta1, .beta2 = h.beta2, .eps = h.eps, .weight_decay = h.weight_decay, .amsgrad = h.amsgrad});
  for (size_t i = 0; i < params.size(); ++i) {
    args.per_tensor[i].set(adabelief::PerTensor{.inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                                                .step = -h.lr / bias_correction(h.beta1, steps[i])});
  }
  cpu::run(cpu::Pass::AdaBeliefApply, scratch.group, args);
  mark_written({params, exp_avgs, exp_avg_sqs, maxima});
}

void adamp_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps, const AdamPHyper& h,
            const GradScaling& scaling, const Sharding& sharding) {
  check(h);
  check_group("AdamP", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  if (h.amsgrad) check_group("AdamP", params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}});
  check_steps("AdamP", steps, params.size());
  check_sharding("AdamP", sharding, params);
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_sqs);
  const auto inv_grad_scale = grad_unscale("AdamP", scaling);
  if (!inv_grad_scale) return;
  auto& scratch = fused_scratch();
  namespace adamp = cpu::protocol::adamp;
  const bool fused = fused_group(scratch.group, params,
                                 adamp::Arrays<TensorList>{.param = params,
                                                           .grad = grads,
                                                           .exp_avg = exp_avgs,
                                                           .exp_avg_sq = exp_avg_sqs,
                                                           .max_exp_avg_sq = maxima});
  const auto reference_grads = fused ? std::vector<at::Tensor>{} : unscaled_grads(grads, *inv_grad_scale);
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(adamp::Constants{
      .beta1 = h.beta1, .beta2 = h.beta2, .eps = h.eps, .weight_decay = h.weight_decay, .amsgrad = h.amsgrad});
  // The step and the projection are known after pass 1.
  for (size_t i = 0; i < params.size(); ++i) {
    args.per_tensor[i].set(adamp::PerTensor{.inv_bc1 = 1.0 / bias_correction(h.beta1, steps[i]),
                                            .inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                                            .step = 0.0,
                                            .projection = 0.0});
  }
  auto& sums = scratch.sums;  // p.g, |p|^2, |g|^2, p.q
  if (fused) {
    cpu::run(cpu::Pass::AdamPMoments, scratch.group, args, &sums);
  } else {
    sums = kernels::reference::adamp_sums(params, reference_grads, exp_avgs, exp_avg_sqs,
                                          max_exp_avg_sqs, steps, h);
  }
  all_reduce_sums("AdamP", sharding, sums, 4);
  std::vector<double> projections(params.size(), 0.0);
  for (size_t i = 0; i < params.size(); ++i) {
    const double p_norm = std::sqrt(sums[i][1]);
    const double cosine =
        sums[i][0] / (std::max(p_norm, kCosineEps) * std::max(std::sqrt(sums[i][2]), kCosineEps));
    const int64_t numel = whole_numel(sharding, params, i);
    if (numel > 0 && cosine < adamp_threshold(h.delta, numel)) {
      // q - (n.q) n with n = p / (||p|| + eps), as a multiple of p.
      projections[i] = sums[i][3] / ((p_norm + h.eps) * (p_norm + h.eps));
    }
    auto row = args.per_tensor[i].get<adamp::PerTensor>();
    row.step = -h.lr;
    row.projection = projections[i];
    args.per_tensor[i].set(row);
  }
  if (!fused) {
    kernels::reference::adamp(params, reference_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                              steps, h, projections);
    return;
  }
  cpu::run(cpu::Pass::AdamPApply, scratch.group, args);
  mark_written({params, exp_avgs, exp_avg_sqs, maxima});
}

void adan_(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
           TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
           c10::ArrayRef<int64_t> steps, const AdanHyper& h, const GradScaling& scaling) {
  check(h);
  check_group("Adan", params, grads,
              {{"prev_grads", prev_grads},
               {"exp_avgs", exp_avgs},
               {"exp_avg_sqs", exp_avg_sqs},
               {"exp_avg_deltas", exp_avg_deltas}});
  if (h.amsgrad) check_group("Adan", params, grads, {{"max_exp_avg_deltas", max_exp_avg_deltas}});
  check_steps("Adan", steps, params.size());
  const TensorList maxima = if_used(h.amsgrad, max_exp_avg_deltas);
  const auto inv_grad_scale = grad_unscale("Adan", scaling);
  if (!inv_grad_scale) return;
  auto& scratch = fused_scratch();
  namespace adan = cpu::protocol::adan;
  if (!fused_group(scratch.group, params,
                   adan::Arrays<TensorList>{.param = params,
                                            .grad = grads,
                                            .prev_grad = prev_grads,
                                            .exp_avg = exp_avgs,
                                            .exp_avg_sq = exp_avg_sqs,
                                            .exp_avg_delta = exp_avg_deltas,
                                            .max_exp_avg_delta = maxima})) {
    kernels::reference::adan(params, unscaled_grads(grads, *inv_grad_scale),
                             prev_grads, exp_avgs, exp_avg_sqs, exp_avg_deltas,
                             max_exp_avg_deltas, steps, h);
    return;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(adan::Constants{.beta1 = h.beta1,
                                     .beta2 = h.beta2,
                                     .beta3 = h.beta3,
                                     .eps = h.eps,
                                     .weight_decay = h.weight_decay,
                                     .amsgrad = h.amsgrad});
  for (size_t i = 0; i < params.size(); ++i) {
    args.per_tensor[i].set(adan::PerTensor{.first_step = steps[i] == 1,
                                           .inv_bc1 = 1.0 / bias_correction(h.beta1, steps[i]),
                                           .beta2_over_bc2 = h.beta2 / bias_correction(h.beta2, steps[i]),
                                           .inv_sqrt_bc3 = inverse_sqrt_bias_correction(h.beta3, steps[i]),
                                           .step = -h.lr,
                                           .decay_divisor = 1.0 + h.weight_decay * h.lr});
  }
  cpu::run(cpu::Pass::AdanApply, scratch.group, args);
  mark_written({params, prev_grads, exp_avgs, exp_avg_sqs, exp_avg_deltas, maxima});
}

void ademamix_(TensorList params, TensorList grads, TensorList exp_avgs,
               TensorList exp_avgs_slow, TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const AdEMAMixHyper& h, const GradScaling& scaling) {
  check(h);
  check_group("AdEMAMix", params, grads,
              {{"exp_avgs", exp_avgs}, {"exp_avgs_slow", exp_avgs_slow}, {"exp_avg_sqs", exp_avg_sqs}});
  check_steps("AdEMAMix", steps, params.size());
  const auto inv_grad_scale = grad_unscale("AdEMAMix", scaling);
  if (!inv_grad_scale) return;
  auto& scratch = fused_scratch();
  namespace ademamix = cpu::protocol::ademamix;
  if (!fused_group(scratch.group, params,
                   ademamix::Arrays<TensorList>{.param = params,
                                                .grad = grads,
                                                .exp_avg = exp_avgs,
                                                .exp_avg_slow = exp_avgs_slow,
                                                .exp_avg_sq = exp_avg_sqs})) {
    kernels::reference::ademamix(params, unscaled_grads(grads, *inv_grad_scale),
                                 exp_avgs, exp_avgs_slow, exp_avg_sqs, steps, h);
    return;
  }
  auto& args = scratch.fresh_args(params.size());
  args.inv_grad_scale = *inv_grad_scale;
  args.constants.set(ademamix::Constants{.beta1 = h.beta1,
                                         .beta2 = h.beta2,
                                         .beta3 = h.beta3,
                                         .alpha = h.alpha,
                                         .eps = h.eps,
                                         .weight_decay = h.weight_decay});
  for (size_t i = 0; i < params.size(); ++i) {
    args.per_tensor[i].set(ademamix::PerTensor{.inv_bc1 = 1.0 / bias_correction(h.beta1, steps[i]),
                                               .inv_sqrt_bc2 = inverse_sqrt_bias_correction(h.beta2, steps[i]),
                                               .step = -h.lr});
  }
  cpu::run(cpu::Pass::AdEMAMixApply, scratch.group, args);
  mark_written({params, exp_avgs, exp_avgs_slow, exp_avg_sqs});
}

}  // namespace holocron::optim::functional
