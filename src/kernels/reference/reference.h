#pragma once

// The reference backend: each algorithm as ATen ops, tensor by tensor. It runs
// on any device, dtype and strides, is the readable statement of the math, and
// is the oracle the fused kernels are tested against. Callers have checked the
// hyper-parameters and the lists (the functional layer); the per-tensor decisions
// (trust ratios, TAdam's weight, AdamP's projection) are the shared host code
// of functional/common.h.

#include <array>

#include "holocron/optim/functional.h"
#include "kernels/cpu/pass.h"

namespace holocron::optim::kernels::reference {

using functional::TensorList;
using kernels::cpu::Sums;

// Each algorithm's math is in its own file (src/algorithms/<algo>.cpp), next to
// the functional function that calls it. The algorithms with whole-tensor
// quantities run in two phases, as the fused kernels: `*_sums` reads (writes
// nothing) and returns per-tensor sums, which the functional layer turns into
// decisions (trust ratios, TAdam's mixing, AdamP's projection) that the update
// then applies. Here: the wrappers' math.
void lookahead_sync(TensorList fast, TensorList slow, double sync_rate);
void scout_accumulate(TensorList fast, const functional::ScoutStats& stats, int64_t count);
/// Per tensor: the sum of the ratios std / max deviation that are numbers, and their count.
Sums scout_coherence_sums(const functional::ScoutStats& stats, int64_t count);

}  // namespace holocron::optim::kernels::reference
