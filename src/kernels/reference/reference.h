#pragma once

// The reference backend: each algorithm as ATen ops, tensor by tensor. It runs
// on any device, dtype and strides, is the readable statement of the math, and
// is the oracle the fused kernels are tested against. Callers have checked the
// hyper-parameters and the lists (src/functional); the per-tensor decisions
// (trust ratios, TAdam's weight, AdamP's projection) are the shared host code
// of functional/common.h.

#include <array>

#include "holocron/optim/functional.h"
#include "kernels/cpu/pass.h"

namespace holocron::optim::kernels::reference {

using functional::TensorList;
using kernels::cpu::Sums;

// The algorithms with whole-tensor quantities run in two phases, as the fused
// kernels: `*_sums` reads (writes nothing) and returns per-tensor sums, which
// the functional layer turns into decisions (trust ratios, TAdam's mixing,
// AdamP's projection) that the update then applies.

/// ||p||^2, ||g||^2.
Sums lars_sums(TensorList params, TensorList grads);
void lars(TensorList params, TensorList grads, TensorList momentum_buffers,
          c10::ArrayRef<bool> buffer_is_new, const functional::LarsHyper& hyper,
          c10::ArrayRef<double> local_lrs);
/// ||p||^2, ||u||^2 with u the direction from this step's moments.
Sums lamb_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               const functional::LambHyper& hyper);
void lamb(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
          const functional::LambHyper& hyper, c10::ArrayRef<double> local_lrs);
Sums ralars_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                 c10::ArrayRef<int64_t> steps, const functional::RaLarsHyper& hyper);
void ralars(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
            c10::ArrayRef<int64_t> steps, const functional::RaLarsHyper& hyper,
            c10::ArrayRef<double> local_lrs);
/// The Mahalanobis distance sum((g - m)^2 / (v + eps)) of the decayed gradient.
Sums tadam_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                const functional::TAdamHyper& hyper);
/// `mixing[i]`: the weights of the old first moment and of the gradient in the new one.
void tadam(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<std::array<double, 2>> mixing,
           c10::ArrayRef<int64_t> steps, const functional::TAdamHyper& hyper);
/// p.g, ||p||^2, ||g||^2 (g decayed) and p.q (q: this step's Adam direction).
Sums adamp_sums(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                const functional::AdamPHyper& hyper);
/// `projections[i]`: the multiple of p taken off q (0: no projection).
void adamp(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
           const functional::AdamPHyper& hyper, c10::ArrayRef<double> projections);
void adabelief(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const functional::AdaBeliefHyper& hyper);
void adan(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
          TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
          c10::ArrayRef<int64_t> steps, const functional::AdanHyper& hyper);
void ademamix(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avgs_slow,
              TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
              const functional::AdEMAMixHyper& hyper);
void lookahead_sync(TensorList fast, TensorList slow, double sync_rate);
void scout_accumulate(TensorList fast, const functional::ScoutStats& stats, int64_t count);
/// Per tensor: the sum of the ratios std / max deviation that are numbers, and their count.
Sums scout_coherence_sums(const functional::ScoutStats& stats, int64_t count);

}  // namespace holocron::optim::kernels::reference
