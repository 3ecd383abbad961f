#pragma once

/// \file
/// The wrappers Lookahead and Scout and their options.

// Lookahead and Scout wrap any torch::optim::Optimizer (holocron's or
// LibTorch's) and are optimizers themselves: their parameter groups are the
// base's, and a scheduler that sets their lr sets the base's (unlike pylocron).

#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <vector>

#include "holocron/optim/functional.h"

namespace holocron::optim {

/// Options of Lookahead and Scout.
///
/// Each field is a `TORCH_ARG`: `opts.sync_period()` reads it, `opts.sync_period(5)` sets it and
/// returns the options, so setters chain. Invalid values throw `std::invalid_argument` when the
/// wrapper is built, and `c10::Error` when a checkpoint holding them is loaded.
struct LookaheadOptions {
  /// Options with every field at its default.
  LookaheadOptions() = default;
  /// How far the slow weights move toward the fast ones at each sync:
  /// `slow += sync_rate * (fast - slow)`. Scout's lower bound of its adaptive rate. Default 0.5;
  /// in [0, 1].
  TORCH_ARG(double, sync_rate) = 0.5;
  /// Number of base optimizer steps between syncs. Default 6; must be >= 1.
  TORCH_ARG(int64_t, sync_period) = 6;
  /// timm's Lookahead (`create_optimizer("lookahead_<name>")`): a parameter's slow weights are
  /// taken from it at its first sync (which leaves it as it is) rather than at construction, a
  /// sync skips the parameters without a gradient, and a group added later counts its own
  /// `sync_period` from then. Lookahead only (Scout refuses it). Default false.
  TORCH_ARG(bool, slow_from_first_sync) = false;
};
/// Options of Scout: the same as Lookahead's.
using ScoutOptions = LookaheadOptions;

namespace detail {

// A wrapper group's options: its lr is the base group's lr.
class BaseGroupOptions : public torch::optim::OptimizerCloneableOptions<BaseGroupOptions> {
 public:
  BaseGroupOptions(std::shared_ptr<torch::optim::Optimizer> base, size_t group_index)
      : base_(std::move(base)), group_index_(group_index) {}
  double get_lr() const override;
  void set_lr(const double lr) override;

 private:
  // Shared: copies of a wrapper's groups may outlive the wrapper.
  std::shared_ptr<torch::optim::Optimizer> base_;
  size_t group_index_;
};

}  // namespace detail

/// Lookahead: every `sync_period` steps of the base optimizer, the slow weights move `sync_rate`
/// of the way to the fast ones and the fast weights restart from them.
///
/// Paper: Michael R. Zhang, James Lucas, Geoffrey Hinton, Jimmy Ba, "Lookahead Optimizer: k steps
/// forward, 1 step back", NeurIPS 2019, [arXiv:1907.08610](https://arxiv.org/abs/1907.08610).
///
/// Wraps any `torch::optim::Optimizer` (LibTorch's or holocron's) and is an optimizer itself. The
/// slow weights are copies of the parameters taken at construction (and in add_param_group).
/// Its parameter groups are the base's, and their lr is the base group's lr, so a LibTorch LR
/// scheduler attached to the wrapper drives the base optimizer. `zero_grad()` clears the
/// gradients of the same parameters.
///
/// Differences from the reference (pylocron 0.3.0):
/// - an LR scheduler on the wrapper sets the base's lr; in the reference it changes only
///   the wrapper's own copy;
/// - checkpoints hold the slow weights and the step counter, so a resumed run continues exactly;
///   the reference restarts from wrong slow weights.
class Lookahead : public torch::optim::Optimizer {
 public:
  /// Wraps `base`, taking slow copies of its parameters.
  /// \throws std::invalid_argument if `base` is null or `options` are invalid.
  explicit Lookahead(std::shared_ptr<torch::optim::Optimizer> base,
                     LookaheadOptions options = {});

  /// Steps the base optimizer (with `closure`, if any), then syncs every `sync_period` steps.
  /// \return What the base optimizer's step returned.
  torch::Tensor step(LossClosure closure = nullptr) override;
  /// A step under mixed-precision loss scaling (see OptimizerBase::step(const
  /// functional::GradScaling&, LossClosure)): skipped, sync counter included, when
  /// `scaling.found_inf` is nonzero. A holocron base (or wrapper) takes the scale into its
  /// update; LibTorch's optimizers cannot, so their gradients are unscaled in place first, as
  /// GradScaler's own unscaling does.
  /// \param scaling The scale the gradients carry and whether any of them is inf or NaN.
  /// \param closure Optional; re-evaluates the model (with grad mode on) and returns the loss.
  /// \return What `closure` returned, or an undefined tensor without one.
  torch::Tensor step(const functional::GradScaling& scaling, LossClosure closure = nullptr);

  /// Adds the group to the base optimizer (keeping a holocron optimizer's group options) and
  /// takes slow copies of its parameters. Call it on the wrapper type (the base function is not
  /// virtual); a group added to the base optimizer directly is mirrored at the next step.
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

  /// Clears the gradients of the base optimizer's parameters, those of a group added to the base
  /// directly included (the wrapper's own groups mirror such a group only from the next step).
  /// Call it on the wrapper type: torch::optim::Optimizer::zero_grad is not virtual.
  void zero_grad(bool set_to_none = true);

  /// For every parameter: `slow += sync_rate * (fast - slow)`, then `fast = slow` (with
  /// `slow_from_first_sync`, for every parameter that has a gradient).
  /// \param sync_rate In [0, 1] (c10::ValueError otherwise).
  void sync_params(double sync_rate);

  /// Writes the checkpoint: the step counter, the options, the slow weights (and Scout's
  /// statistics), then the base optimizer's checkpoint.
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Checks the whole checkpoint (and lets the base check its part) before replacing anything.
  /// Restores the options, the step counter, the slow weights and the base's state.
  /// \throws c10::Error if it was written by another wrapper or does not fit the parameters.
  void load(torch::serialize::InputArchive& archive) override;

  /// The wrapped optimizer.
  torch::optim::Optimizer& base_optimizer() noexcept { return *base_; }
  /// The wrapped optimizer.
  const torch::optim::Optimizer& base_optimizer() const noexcept { return *base_; }
  /// The wrapper's options (those of a loaded checkpoint after load()).
  const LookaheadOptions& options() const noexcept { return options_; }
  /// Number of base steps taken since construction (or as loaded).
  int64_t fast_steps() const noexcept { return fast_steps_; }
  /// Slow weights, per group and parameter, in the base's order (with `slow_from_first_sync`, an
  /// undefined tensor until the parameter's first sync).
  const std::vector<std::vector<torch::Tensor>>& slow_params() const noexcept { return slow_; }
  /// "Lookahead" or "Scout" (checkpoints record it).
  const char* name() const noexcept { return name_; }

 protected:
  /// For subclasses: as the public constructor, under the name `name`. Does not mirror the base's
  /// groups: the most-derived constructor calls mirror_new_base_groups(), once its
  /// add_group_state() is in place.
  Lookahead(std::shared_ptr<torch::optim::Optimizer> base, LookaheadOptions options,
            const char* name);

  /// Hook called before each base step, which throws (nothing changed) for a base it cannot
  /// wrap as it is now. Lookahead takes any.
  virtual void check_base() const {}
  /// Hook called after each base step. `changes_before` counts the steps of this period before
  /// the one just taken.
  virtual void after_base_step(int64_t changes_before);
  /// Hook giving the rate of a sync; `changes_in_period` counts the steps of the period.
  /// Lookahead returns `sync_rate`.
  virtual double rate_for_sync(int64_t changes_in_period);
  /// Hook called after each sync.
  virtual void after_sync();
  /// Hook called when group `group_index` is mirrored, to create its extra state.
  virtual void add_group_state(size_t group_index);
  /// Hook dropping every group's extra state, before the copies are taken anew.
  virtual void clear_group_states();
  /// A copy of a parameter the wrapper holds, with the dtype it must have (none: the
  /// parameter's): see check_copies_fit().
  struct Copy {
    /// What the copy is, for messages ("slow weight").
    const char* what;
    /// The copy itself (undefined: not taken yet, as slow_from_first_sync's before a sync).
    const torch::Tensor* tensor;
    /// The dtype it must have; none: its parameter's.
    std::optional<at::ScalarType> dtype;
  };
  /// Hook listing the copies of parameter `index` of group `group_index` (`flat`: its index
  /// among all parameters): Lookahead's slow weight, and Scout's previous weight.
  virtual void copies_of(size_t group_index, size_t index, size_t flat, std::vector<Copy>& out) const;
  /// Hook writing extra state into a checkpoint.
  virtual void save_extra(torch::serialize::OutputArchive& archive) const;
  /// Hook reading and checking extra state; returns what commits the read state (called once
  /// everything is checked).
  virtual std::function<void()> load_extra(torch::serialize::InputArchive& archive);

  /// The parameters of every group, in the base's order.
  std::vector<torch::Tensor> fast_params() const;
  /// The slow weights of every group, in the base's order.
  std::vector<torch::Tensor> flat_slow_params() const;
  /// `tensors` with each complex one as its real view (at::view_as_real), as the sync and the
  /// statistics take them: a complex weight is its real and imaginary parts, as in torch's
  /// optimizers. `tensors` itself when no wrapped parameter is complex.
  std::vector<torch::Tensor> real_views(std::vector<torch::Tensor> tensors) const;
  /// Whether a wrapped parameter is complex.
  bool wraps_complex() const noexcept { return has_complex_; }
  /// Gives each base group not yet mirrored a wrapper group and slow copies, and checks that the
  /// groups already mirrored still match the base's.
  void mirror_new_base_groups();
  /// The dtype group `group_index` of the base keeps its state in: its `state_precision`'s
  /// (a holocron base, or a wrapper of one), or none for the parameters' own.
  std::optional<at::ScalarType> base_state_dtype(size_t group_index) const;
  /// The Kahan compensations of `fast` in the base's state (OptimizerBase::kahan_compensation).
  std::vector<torch::Tensor> base_compensation(const std::vector<torch::Tensor>& fast) const;
  /// Parameter `index` as a weight (detached): p, or p + c in float32 where `compensation` holds its c.
  static torch::Tensor weight_of(const torch::Tensor& param, const std::vector<torch::Tensor>& compensation,
                                 size_t index);

 private:
  // The base's step (given), then the wrapper's count, statistics and sync.
  torch::Tensor step_after_base(const std::function<torch::Tensor()>& base_step);
  // Before the base moves anything: each copy (copies_of) still has its parameter's shape and
  // device and its dtype. A parameter converted or moved in place since the copies were taken
  // gets new copies before the first step; after it, the step throws (nothing changed), where the
  // sync or the statistics would fail once the base had stepped, or round the weights.
  void check_copies_fit();
  // slow_from_first_sync's sync of one group: its parameters that have a gradient.
  void sync_group(size_t group_index, double sync_rate);

  std::shared_ptr<torch::optim::Optimizer> base_;
  LookaheadOptions options_;
  const char* name_;
  int64_t fast_steps_ = 0;
  std::vector<std::vector<torch::Tensor>> slow_;
  // fast_steps_ when each group was mirrored (slow_from_first_sync counts from there).
  std::vector<int64_t> group_start_;
  bool has_complex_ = false;
};

/// Scout: Lookahead whose rate at each sync is `max(1 - coherence, sync_rate)`, the coherence
/// measuring how consistently each element moved over the period.
///
/// Holocron's own variant of Lookahead (by the author of Holocron; no paper), built on Michael R.
/// Zhang, James Lucas, Geoffrey Hinton, Jimmy Ba, "Lookahead Optimizer: k steps forward, 1 step
/// back", 2019, [arXiv:1907.08610](https://arxiv.org/abs/1907.08610).
///
/// The coherence is the mean, over parameters, of the mean over elements of
/// `std(u) / max|u - mean(u)|`, `u` being the `sync_period` successive per-step changes of that
/// element (std unbiased, over the steps): see functional::scout_coherence().
///
/// Differences from the reference (pylocron 0.3.0), beside Lookahead's:
/// - running per-element statistics instead of a growing stack of parameter copies: fixed memory
///   and one pass per step, the same sync rate;
/// - elements that did not move (0/0) are ignored, so the rate is always in `[sync_rate, 1]`; the
///   reference lets the NaN through and silently resets every fast weight to its slow copy;
/// - checkpoints also hold the statistics.
class Scout : public Lookahead {
 public:
  /// Wraps `base`, taking slow copies of its parameters.
  /// \throws std::invalid_argument if `base` is null or `options` are invalid.
  explicit Scout(std::shared_ptr<torch::optim::Optimizer> base, ScoutOptions options = {});

  /// The rate the last sync used (NaN before the first sync).
  double last_sync_rate() const noexcept { return last_sync_rate_; }

 protected:
  /// \cond INTERNAL

  void check_base() const override;
  void after_base_step(int64_t changes_before) override;
  double rate_for_sync(int64_t changes_in_period) override;
  void after_sync() override;
  void add_group_state(size_t group_index) override;
  void clear_group_states() override;
  void copies_of(size_t group_index, size_t index, size_t flat, std::vector<Copy>& out) const override;
  void save_extra(torch::serialize::OutputArchive& archive) const override;
  std::function<void()> load_extra(torch::serialize::InputArchive& archive) override;
  /// \endcond

 private:
  struct Stats {
    std::vector<torch::Tensor> prev, mean, m2, max, min;
  };
  // The statistics as the functional layer takes them: stats_, or their real
  // views put in `scratch` when a wrapped parameter is complex.
  const Stats& functional_stats(Stats& scratch) const;
  static functional::ScoutStats view(const Stats& stats);

  Stats stats_;  // flat, in the base's parameter order
  double last_sync_rate_;
};

}  // namespace holocron::optim
