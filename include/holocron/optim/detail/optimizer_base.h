#pragma once

// What every holocron optimizer shares with LibTorch's Optimizer, done once:
// group options that survive add_param_group, a step that validates every
// parameter before it writes anything, and checkpoints that are keyed by
// position, carry each group's options and are checked whole before loading.

#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include "holocron/optim/functional.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

namespace holocron::optim {

using betas2_t = std::tuple<double, double>;
using betas3_t = std::tuple<double, double, double>;
using scale_clip_t = std::optional<std::tuple<double, double>>;
using dof_t = std::optional<double>;

// Bumped when the layout of checkpoints changes.
inline constexpr int64_t kCheckpointFormatVersion = 1;

namespace detail {

// Field visitors: options and param states list their fields once, in a
// static `fields(self, visitor)`, and these give them serialization.
struct FieldWriter {
  torch::serialize::OutputArchive& archive;
  void operator()(const char* name, const torch::Tensor& t) const;
  void operator()(const char* name, int64_t v) const;
  void operator()(const char* name, double v) const;
  void operator()(const char* name, bool v) const;
  void operator()(const char* name, const betas2_t& v) const;
  void operator()(const char* name, const betas3_t& v) const;
  void operator()(const char* name, const scale_clip_t& v) const;
  void operator()(const char* name, const dof_t& v) const;
};

// Reads what FieldWriter wrote. A tensor that was not written (an optional
// buffer not created yet) stays undefined; any other missing field throws.
struct FieldReader {
  torch::serialize::InputArchive& archive;
  void operator()(const char* name, torch::Tensor& t) const;
  void operator()(const char* name, int64_t& v) const;
  void operator()(const char* name, double& v) const;
  void operator()(const char* name, bool& v) const;
  void operator()(const char* name, betas2_t& v) const;
  void operator()(const char* name, betas3_t& v) const;
  void operator()(const char* name, scale_clip_t& v) const;
  void operator()(const char* name, dof_t& v) const;
};

// Calls `on_tensor(name, tensor)` on each defined tensor field and
// `on_counter(name, value)` on each integer field (step counters).
struct StateFieldVisitor {
  const std::function<void(const char*, const torch::Tensor&)>& on_tensor;
  const std::function<void(const char*, int64_t)>& on_counter;
  void operator()(const char* name, const torch::Tensor& t) const {
    if (t.defined()) on_tensor(name, t);
  }
  void operator()(const char* name, int64_t v) const { on_counter(name, v); }
  template <typename T>
  void operator()(const char*, const T&) const {}
};

// Field-by-field equality (tensors compared by value), for operator==.
using FieldValue =
    std::variant<torch::Tensor, int64_t, double, bool, betas2_t, betas3_t, scale_clip_t, dof_t>;

struct FieldCollector {
  std::vector<FieldValue>& out;
  template <typename T>
  void operator()(const char*, const T& value) const {
    out.emplace_back(std::in_place_type<T>, value);
  }
};

bool same_values(const std::vector<FieldValue>& lhs, const std::vector<FieldValue>& rhs);

template <typename T>
bool same_fields(const T& lhs, const T& rhs) {
  std::vector<FieldValue> a, b;
  FieldCollector collect_a{a}, collect_b{b};
  T::fields(lhs, collect_a);
  T::fields(rhs, collect_b);
  return same_values(a, b);
}

template <typename Derived>
struct ParamStateBase : torch::optim::OptimizerCloneableParamState<Derived> {
  friend bool operator==(const Derived& lhs, const Derived& rhs) { return same_fields(lhs, rhs); }
  friend bool operator!=(const Derived& lhs, const Derived& rhs) { return !(lhs == rhs); }

  void serialize(torch::serialize::OutputArchive& archive) const override {
    FieldWriter writer{archive};
    Derived::fields(static_cast<const Derived&>(*this), writer);
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    FieldReader reader{archive};
    Derived::fields(static_cast<Derived&>(*this), reader);
  }
};

template <typename Derived>
struct OptionsBase : torch::optim::OptimizerCloneableOptions<Derived> {
  friend bool operator==(const Derived& lhs, const Derived& rhs) { return same_fields(lhs, rhs); }
  friend bool operator!=(const Derived& lhs, const Derived& rhs) { return !(lhs == rhs); }

  void serialize(torch::serialize::OutputArchive& archive) const override {
    FieldWriter writer{archive};
    Derived::fields(static_cast<const Derived&>(*this), writer);
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    FieldReader reader{archive};
    Derived::fields(static_cast<Derived&>(*this), reader);
  }
  double get_lr() const override { return static_cast<const Derived&>(*this).lr(); }
  void set_lr(const double lr) override { static_cast<Derived&>(*this).lr(lr); }
};

}  // namespace detail

// The base of the eight algorithms (the wrappers have their own).
class OptimizerBase : public torch::optim::Optimizer {
 public:
  // Unlike torch::optim::Optimizer::add_param_group, which gives the groups
  // of non-builtin optimizers the defaults, keeps the group's own options
  // (and checks them). Call it on the holocron type: the base function is not
  // virtual.
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

  // Validates every parameter of every group, then updates them all.
  torch::Tensor step(LossClosure closure = nullptr) final;

  void save(torch::serialize::OutputArchive& archive) const override;
  // Reads and checks the whole checkpoint before replacing anything.
  void load(torch::serialize::InputArchive& archive) override;

  // The algorithm's name as the reference spells it ("LAMB", ...).
  const char* name() const noexcept { return name_; }

 protected:
  OptimizerBase(std::unique_ptr<torch::optim::OptimizerOptions> defaults, const char* name);

  // Throws c10::ValueError naming the argument when options are invalid.
  virtual void check_options(const torch::optim::OptimizerOptions& options) const = 0;
  virtual std::unique_ptr<torch::optim::OptimizerOptions> make_options() const = 0;
  virtual std::unique_ptr<torch::optim::OptimizerParamState> make_state() const = 0;
  virtual void visit_fields(const torch::optim::OptimizerParamState& state,
                            const std::function<void(const char*, const torch::Tensor&)>& on_tensor,
                            const std::function<void(const char*, int64_t)>& on_counter) const = 0;
  // Creates the buffers a parameter needs under these options and lacks.
  virtual void prepare_state(torch::optim::OptimizerParamState& state, const torch::Tensor& param,
                             const torch::optim::OptimizerOptions& options) const = 0;
  // Updates one group: every param has a gradient and a prepared state.
  virtual void update_group(const torch::optim::OptimizerOptions& options,
                            const std::vector<torch::Tensor>& params,
                            const std::vector<torch::Tensor>& grads,
                            const std::vector<torch::optim::OptimizerParamState*>& states) = 0;

 private:
  void check_state_fits(const torch::optim::OptimizerParamState& state, const torch::Tensor& param,
                        size_t group_index, size_t param_index) const;

  const char* name_;
};

namespace detail {

// Binds an algorithm's options and state types to the type-erased base.
template <typename Options, typename State>
class Algorithm : public OptimizerBase {
 public:
  using OptionsType = Options;
  using StateType = State;

 protected:
  Algorithm(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
            const Options& defaults, const char* name)
      : OptimizerBase(std::make_unique<Options>(defaults), name) {
    check_options(defaults);
    for (const auto& group : param_groups) add_param_group(group);
  }

  virtual void init_state(State& state, const torch::Tensor& param,
                          const Options& options) const = 0;
  virtual void update(const Options& options, const std::vector<torch::Tensor>& params,
                      const std::vector<torch::Tensor>& grads,
                      const std::vector<State*>& states) = 0;

  void check_options(const torch::optim::OptimizerOptions& options) const override {
    functional::check(static_cast<const Options&>(options).hyper());
  }
  std::unique_ptr<torch::optim::OptimizerOptions> make_options() const override {
    return std::make_unique<Options>(0.0);
  }
  std::unique_ptr<torch::optim::OptimizerParamState> make_state() const override {
    return std::make_unique<State>();
  }
  void visit_fields(const torch::optim::OptimizerParamState& state,
                    const std::function<void(const char*, const torch::Tensor&)>& on_tensor,
                    const std::function<void(const char*, int64_t)>& on_counter) const override {
    StateFieldVisitor visitor{on_tensor, on_counter};
    State::fields(static_cast<const State&>(state), visitor);
  }
  void prepare_state(torch::optim::OptimizerParamState& state, const torch::Tensor& param,
                     const torch::optim::OptimizerOptions& options) const override {
    init_state(static_cast<State&>(state), param, static_cast<const Options&>(options));
  }
  void update_group(const torch::optim::OptimizerOptions& options,
                    const std::vector<torch::Tensor>& params,
                    const std::vector<torch::Tensor>& grads,
                    const std::vector<torch::optim::OptimizerParamState*>& states) override {
    std::vector<State*> typed(states.size());
    for (size_t i = 0; i < states.size(); ++i) typed[i] = static_cast<State*>(states[i]);
    update(static_cast<const Options&>(options), params, grads, typed);
  }
};

// A zero buffer shaped like `param` unless `buffer` already holds one.
inline void ensure_buffer(torch::Tensor& buffer, const torch::Tensor& param) {
  if (!buffer.defined()) buffer = torch::zeros_like(param, at::MemoryFormat::Preserve);
}

}  // namespace detail
}  // namespace holocron::optim
