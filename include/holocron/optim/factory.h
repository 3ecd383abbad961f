#pragma once

/// \file
/// timm's optimizer factory for LibTorch: `create_optimizer(name, module, options)`.

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "holocron/optim/detail/optimizer_base.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace holocron::optim {

/// What create_optimizer() takes besides the name and the parameters: the arguments of timm's
/// `create_optimizer_v2` that apply to these optimizers.
struct FactoryOptions {
  /// Learning rate; none: the optimizer's default under that name (timm's).
  std::optional<double> lr;
  /// Weight decay. From a module, it goes to the group of parameters that decay (the others get
  /// 0); given groups, it is the optimizer's default.
  double weight_decay = 0.0;
  /// Momentum of the names that have one (the LARS names), as timm's default.
  double momentum = 0.9;
  /// From a module: parameters of at most one dimension and biases go without weight decay.
  bool filter_bias_and_bn = true;
  /// From a module: name patterns (as name_matches()) that go without weight decay, as a timm
  /// model's `no_weight_decay()`.
  std::vector<std::string> no_weight_decay_names;
  /// The dtype of the optimizer's per-element state (not one of timm's arguments): the
  /// parameter's, float32 or bfloat16. Groups given with options of their own keep theirs.
  StatePrecision state_precision = StatePrecision::param;
  /// Kahan-compensated bfloat16 and float16 weights (not one of timm's arguments; the options'
  /// `kahan_summation`). Groups given with options of their own keep theirs.
  bool kahan_summation = false;
};

/// The names create_optimizer() takes, sorted: timm's `adabelief`, `adamp`, `adan`, `adanw`, `cadan`, `cadanw`, `clamb`,
/// `clambw`, `lamb`,
/// `lambc`, `lambw`, `lambcw`, `lars`, `larc`, `nlars`, `nlarc`, `radabelief` (timm 1.0.31's numbers) and
/// holocron's `ralars`, `tadam`, `ademamix`; each may be prefixed `lookahead_` (timm's
/// Lookahead around it: Lookahead with `slow_from_first_sync`, rate 0.5, period 6) or `scout_`
/// (holocron's Scout around it).
std::vector<std::string> list_optimizers();

/// The optimizer `name` (see list_optimizers()) over `module`'s parameters, grouped as timm's
/// `create_optimizer_v2` groups them (see param_groups_weight_decay()): timm's `Lamb`
/// (LAMBOptions with bias correction, eps 1e-6, `max_grad_norm` 1, no trust ratio where weight
/// decay is 0, `||p||` unbounded; `lambc` adds `trust_clip`, `lambw` decoupled weight decay,
/// `lambcw` both) and `Lars` (LARSOptions with
/// `trust_coeff` 0.001, eps 1e-8, the ratio on the gradient, no ratio where weight decay is 0;
/// `larc` adds `trust_clip`, `nlars` Nesterov momentum, `nlarc` both) and `Adan` (AdanOptions
/// with `decoupled_weight_decay`; `adanw` adds `no_prox`, `cadan` and `cadanw` `caution`) and
/// `AdaBelief` (AdaBeliefOptions with eps 1e-16 added into the second moment and decoupled weight
/// decay; `radabelief` adds `rectify`) and `AdamP` (AdamPOptions with `channel_projection`,
/// decoupled weight decay, `nesterov` and `wd_ratio` 0.01, the name's defaults in timm).
///
///     auto optimizer = holocron::optim::create_optimizer("lamb", *model, {.lr = 2e-3, .weight_decay = 0.05});
///
/// \throws std::invalid_argument for an unknown name; c10::NotImplementedError for one of timm's
///   names this library does not reproduce yet (`cadamp`, `cadamw`, `lookahead_cadamw`, ...);
///   c10::ValueError for invalid options.
std::unique_ptr<torch::optim::Optimizer> create_optimizer(const std::string& name,
                                                          const torch::nn::Module& module,
                                                          const FactoryOptions& options = {});

/// The same over parameters grouped by the caller: groups without options get the name's
/// defaults with `options`' lr and weight decay; a group's own options must be of the
/// optimizer's options type.
std::unique_ptr<torch::optim::Optimizer> create_optimizer(
    const std::string& name, const std::vector<torch::optim::OptimizerParamGroup>& groups,
    const FactoryOptions& options = {});

}  // namespace holocron::optim
