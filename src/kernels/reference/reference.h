#pragma once

// The reference backend: each algorithm as ATen ops, tensor by tensor. It runs
// on any device, dtype and strides, is the readable statement of the math, and
// is the oracle the fused kernels are tested against. Callers have checked the
// hyper-parameters and the lists (src/functional); the per-tensor decisions
// (trust ratios, TAdam's weight, AdamP's projection) are the shared host code
// of functional/common.h.

#include "holocron/optim/functional.h"

namespace holocron::optim::kernels::reference {

using functional::TensorList;

std::vector<double> lars(TensorList params, TensorList grads, TensorList momentum_buffers,
                         c10::ArrayRef<bool> buffer_is_new, const functional::LarsHyper& hyper);
std::vector<double> lamb(TensorList params, TensorList grads, TensorList exp_avgs,
                         TensorList exp_avg_sqs, const functional::LambHyper& hyper);
std::vector<double> ralars(TensorList params, TensorList grads, TensorList exp_avgs,
                           TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
                           const functional::RaLarsHyper& hyper);
void tadam(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, std::vector<double>& moment_weights,
           c10::ArrayRef<int64_t> steps, const functional::TAdamHyper& hyper);
void adabelief(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
               const functional::AdaBeliefHyper& hyper);
void adamp(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, c10::ArrayRef<int64_t> steps,
           const functional::AdamPHyper& hyper);
void adan(TensorList params, TensorList grads, TensorList prev_grads, TensorList exp_avgs,
          TensorList exp_avg_sqs, TensorList exp_avg_deltas, TensorList max_exp_avg_deltas,
          c10::ArrayRef<int64_t> steps, const functional::AdanHyper& hyper);
void ademamix(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avgs_slow,
              TensorList exp_avg_sqs, c10::ArrayRef<int64_t> steps,
              const functional::AdEMAMixHyper& hyper);
void lookahead_sync(TensorList fast, TensorList slow, double sync_rate);
void scout_accumulate(TensorList fast, const functional::ScoutStats& stats, int64_t count);
double scout_coherence(const functional::ScoutStats& stats, int64_t count);

}  // namespace holocron::optim::kernels::reference
