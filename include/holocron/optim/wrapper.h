#pragma once

// Lookahead and Scout wrap any torch::optim::Optimizer (holocron's or
// LibTorch's) and are optimizers themselves: their parameter groups are the
// base's, and a scheduler that sets their lr sets the base's (fix 8).

#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "holocron/optim/functional.h"

namespace holocron::optim {

struct LookaheadOptions {
  LookaheadOptions() = default;
  TORCH_ARG(double, sync_rate) = 0.5;
  TORCH_ARG(int64_t, sync_period) = 6;
};
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

// Lookahead: every `sync_period` steps of the base optimizer, the slow
// weights move `sync_rate` of the way to the fast ones and the fast weights
// restart from them.
class Lookahead : public torch::optim::Optimizer {
 public:
  explicit Lookahead(std::shared_ptr<torch::optim::Optimizer> base,
                     LookaheadOptions options = {});

  torch::Tensor step(LossClosure closure = nullptr) override;

  // Adds the group to the base optimizer (keeping a holocron optimizer's
  // group options) and takes slow copies of its parameters.
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

  // slow += rate * (fast - slow); fast = slow, for every parameter.
  void sync_params(double sync_rate);

  void save(torch::serialize::OutputArchive& archive) const override;
  // Checks the whole checkpoint (and lets the base check its part) before
  // replacing anything.
  void load(torch::serialize::InputArchive& archive) override;

  torch::optim::Optimizer& base_optimizer() noexcept { return *base_; }
  const torch::optim::Optimizer& base_optimizer() const noexcept { return *base_; }
  const LookaheadOptions& options() const noexcept { return options_; }
  int64_t fast_steps() const noexcept { return fast_steps_; }
  // Slow weights, per group and parameter, in the base's order.
  const std::vector<std::vector<torch::Tensor>>& slow_params() const noexcept { return slow_; }
  const char* name() const noexcept { return name_; }

 protected:
  Lookahead(std::shared_ptr<torch::optim::Optimizer> base, LookaheadOptions options,
            const char* name);

  // Hooks for Scout. `changes_before` counts the steps of this period before
  // the one just taken.
  virtual void after_base_step(int64_t changes_before);
  virtual double rate_for_sync(int64_t changes_in_period);
  virtual void after_sync();
  virtual void add_group_state(size_t group_index);
  virtual void save_extra(torch::serialize::OutputArchive& archive) const;
  // Reads and checks; returns what commits the read state.
  virtual std::function<void()> load_extra(torch::serialize::InputArchive& archive);

  std::vector<torch::Tensor> fast_params() const;
  std::vector<torch::Tensor> flat_slow_params() const;
  // Gives each base group not yet mirrored a wrapper group and slow copies,
  // and checks that the groups already mirrored still match the base's.
  void mirror_new_base_groups();

 private:
  std::shared_ptr<torch::optim::Optimizer> base_;
  LookaheadOptions options_;
  const char* name_;
  int64_t fast_steps_ = 0;
  std::vector<std::vector<torch::Tensor>> slow_;
};

// Scout: Lookahead whose rate at each sync is max(1 - coherence, sync_rate),
// the coherence measuring how consistently each element moved over the
// period. Keeps running statistics (fix 4) and ignores elements that did not
// move (fix 5).
class Scout : public Lookahead {
 public:
  explicit Scout(std::shared_ptr<torch::optim::Optimizer> base, ScoutOptions options = {});

  // The rate the last sync used (NaN before the first sync).
  double last_sync_rate() const noexcept { return last_sync_rate_; }

 protected:
  void after_base_step(int64_t changes_before) override;
  double rate_for_sync(int64_t changes_in_period) override;
  void after_sync() override;
  void add_group_state(size_t group_index) override;
  void save_extra(torch::serialize::OutputArchive& archive) const override;
  std::function<void()> load_extra(torch::serialize::InputArchive& archive) override;

 private:
  struct Stats {
    std::vector<torch::Tensor> prev, mean, m2, max, min;
  };
  functional::ScoutStats view() const;

  Stats stats_;  // flat, in the base's parameter order
  double last_sync_rate_;
};

}  // namespace holocron::optim
