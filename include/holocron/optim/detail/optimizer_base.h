#pragma once

/// \file
/// OptimizerBase, the base of the eight algorithms, and the option types they share.

// What every holocron optimizer shares with LibTorch's Optimizer, done once:
// group options that survive add_param_group, a step that validates every
// parameter before it writes anything, and checkpoints that are keyed by
// position, carry each group's options and are checked whole before loading.

#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include "holocron/optim/detail/fields.h"
#include "holocron/optim/functional.h"
#include "holocron/optim/quantization.h"

#include <cmath>
#include <cstring>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

/// A field: TORCH_ARG's accessors (`opts.lr()`, `opts.lr(1e-2)`), the default after it as with
/// TORCH_ARG (`HOLOCRON_FIELD(double, lr) = 1e-3;`), and its entry in the struct's fields()
/// (after HOLOCRON_FIELDS: see detail/fields.h).
#define HOLOCRON_FIELD(T, name) HOLOCRON_FIELD_NUMBERED(T, name, __LINE__)
#define HOLOCRON_FIELD_NUMBERED(T, name, line) \
 public:                                       \
  HOLOCRON_FIELD_VISITOR(name, line, self.name()) \
  TORCH_ARG(T, name)

namespace holocron::optim {

/// Two moving-average coefficients `(beta1, beta2)`, each in `[0, 1)`.
using betas2_t = std::tuple<double, double>;
/// Three moving-average coefficients `(beta1, beta2, beta3)`, each in `[0, 1)`.
using betas3_t = std::tuple<double, double, double>;
/// Optional bounds `(low, high)` of a parameter's norm in a trust ratio (LARS, LAMB, RaLars).
using scale_clip_t = std::optional<std::tuple<double, double>>;
/// An optional real option: TAdam's degrees of freedom, LAMB's `max_grad_norm`.
using optional_real_t = std::optional<double>;
/// Optional degrees of freedom of TAdam's Student-t estimate.
using dof_t = optional_real_t;

/// The dtype of a group's per-element state buffers (moments, momentum buffers, running maxima,
/// Adan's previous gradient), the options' `state_precision`. The math runs in the parameter's
/// math type (float32 for bfloat16 and half parameters) whatever the state's dtype: a buffer is
/// loaded into it and rounded to nearest even when stored. Step counters, trust ratios and
/// TAdam's `W_t` stay exact.
enum class StatePrecision {
  /// The parameter's own dtype (the default, and the only choice before this option existed).
  param,
  /// float32: mixed precision for bfloat16 and half parameters; 4 bytes per value for any.
  float32,
  /// bfloat16: 2 bytes per value for any parameter dtype (torch's fused CUDA AdamW keeps such
  /// moments; DeepSpeed's CPU Adam on request).
  bfloat16,
  /// "8bit": each moment (the state's detail::CodedMoment list) of a tensor of at least
  /// detail::kBlockwiseMinNumel elements is kept as 8-bit block-wise codes (uint8, the
  /// parameter's shape) with one float32 scale per block of 256 (`<moment>_absmax`), about 1.02
  /// bytes per value (quantization.h); everything else of the state is float32. Trust ratios,
  /// norms, TAdam's distance and AdamP's cosines are taken from the decoded values as in float32.
  blockwise8,
};

/// The name of a state precision as the Python classes and checkpoints spell it ("param",
/// "float32", "bfloat16", "8bit").
const char* to_string(StatePrecision precision);
/// The state precision named `name`.
/// \throws c10::ValueError for another name.
StatePrecision state_precision_from_string(const std::string& name);
/// The dtype of state buffers under `precision`; none for `param` (each parameter's own).
std::optional<at::ScalarType> state_dtype(StatePrecision precision);
/// The dtype of `param`'s state buffers under `precision`.
at::ScalarType state_dtype(StatePrecision precision, const at::Tensor& param);

namespace detail {
/// The state key of a Kahan compensation (`kahan_summation`): a buffer of the parameter's dtype
/// whatever the group's state_precision.
inline constexpr const char* kKahanCompensation = "kahan_comp";

/// A per-element buffer that StatePrecision::blockwise8 keeps as codes: its field, its scales'
/// field, and its map (signed for first moments and momentum, unsigned for second moments and
/// their maxima). Each param state lists its own (`coded_moments()`), in the order of its
/// functional function's state lists.
struct CodedMoment {
  /// The option without which an update does not take the moment (a state may still hold it:
  /// amsgrad switched off after steps).
  enum class KeptWith {
    always,   ///< every update takes it
    amsgrad,  ///< only with `amsgrad` (a running maximum)
    momentum  ///< only with `momentum != 0` (LARS' momentum buffer)
  };
  /// The state field holding the codes (or floats where the tensor is too small).
  const char* name;
  /// The state field holding the codes' scales, `<name>_absmax`.
  const char* absmax;
  /// Through the signed map (first moments, momentum), else the unsigned one.
  bool is_signed;
  /// When an update takes the moment.
  KeptWith kept_with = KeptWith::always;
};
/// Smaller tensors keep float32 moments under "8bit" (bitsandbytes' rule).
inline constexpr int64_t kBlockwiseMinNumel = 4096;
}  // namespace detail

/// Newest version of the checkpoint layout (loading accepts 1 to this one). A checkpoint is
/// written with the oldest version that holds its content, so that older builds refuse only what
/// they would load with other numbers: 2 is a Lookahead with `slow_from_first_sync` (per-group
/// periods, slow weights not taken yet); everything else is 1.
inline constexpr int64_t kCheckpointFormatVersion = 2;

namespace detail {

// Field visitors: options and param states list their fields once (HOLOCRON_FIELD), and these
// give them serialization.
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
  void operator()(const char* name, StatePrecision v) const;
};

// Reads what FieldWriter wrote. A tensor that was not written (an optional
// buffer not created yet) stays undefined; a field of `added_later` missing
// (a checkpoint written before the option existed) keeps the value it has,
// the option's default; any other missing field throws.
struct FieldReader {
  torch::serialize::InputArchive& archive;
  std::vector<std::string> added_later = {};
  bool keeps_value(const char* name) const;
  void operator()(const char* name, torch::Tensor& t) const;
  void operator()(const char* name, int64_t& v) const;
  void operator()(const char* name, double& v) const;
  void operator()(const char* name, bool& v) const;
  void operator()(const char* name, betas2_t& v) const;
  void operator()(const char* name, betas3_t& v) const;
  void operator()(const char* name, scale_clip_t& v) const;
  void operator()(const char* name, dof_t& v) const;
  void operator()(const char* name, StatePrecision& v) const;
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

// Points `found` at the tensor field named `name` (Algorithm::field_of).
struct TensorFieldFinder {
  const char* name;
  torch::Tensor*& found;
  void operator()(const char* field, torch::Tensor& t) const {
    if (std::strcmp(field, name) == 0) found = &t;
  }
  template <typename T>
  void operator()(const char*, T&) const {}
};

// Field-by-field equality (tensors compared by value), for operator==.
using FieldValue =
    std::variant<torch::Tensor, int64_t, double, bool, betas2_t, betas3_t, scale_clip_t, dof_t, StatePrecision>;

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

/// Base of every `XParamState`: comparison and serialization from `Derived::fields`.
///
/// Each field is a `TORCH_ARG` named as the reference's state key; buffers have the parameter's
/// shape and device, and the dtype its group's `state_precision` keeps (StatePrecision), and an optional buffer (such as amsgrad's) is undefined when unused.
/// Its fields are declared with HOLOCRON_FIELD after HOLOCRON_FIELDS.
template <typename Derived>
struct ParamStateBase : torch::optim::OptimizerCloneableParamState<Derived> {
  /// Calls `visit(name, value)` on each field, in declaration order.
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit_fields<Derived>(self, visit);
  }
  /// Field-by-field equality; tensors are compared by value.
  friend bool operator==(const Derived& lhs, const Derived& rhs) { return same_fields(lhs, rhs); }
  /// Negation of operator==.
  friend bool operator!=(const Derived& lhs, const Derived& rhs) { return !(lhs == rhs); }

  /// Writes every field (undefined tensors are left out).
  void serialize(torch::serialize::OutputArchive& archive) const override {
    FieldWriter writer{archive};
    Derived::fields(static_cast<const Derived&>(*this), writer);
  }
  /// Reads what serialize(OutputArchive&) wrote; a missing field other than an optional
  /// buffer throws.
  void serialize(torch::serialize::InputArchive& archive) override {
    FieldReader reader{archive};
    Derived::fields(static_cast<Derived&>(*this), reader);
  }
};

/// Base of every `XOptions`: comparison, serialization and the lr that LibTorch's schedulers set.
///
/// Each field is a `TORCH_ARG`: `opts.lr()` reads it, `opts.lr(1e-2)` sets it and returns the
/// options, so setters chain. Invalid values throw `c10::ValueError` naming the field, when the
/// optimizer is built, in add_param_group and when a checkpoint is loaded.
/// Its fields are declared with HOLOCRON_FIELD after HOLOCRON_FIELDS: what serialization and
/// comparison read.
template <typename Derived>
struct OptionsBase : torch::optim::OptimizerCloneableOptions<Derived> {
  /// Calls `visit(name, value)` on each field, in declaration order.
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit_fields<Derived>(self, visit);
  }
  /// Field-by-field equality.
  friend bool operator==(const Derived& lhs, const Derived& rhs) { return same_fields(lhs, rhs); }
  /// Negation of operator==.
  friend bool operator!=(const Derived& lhs, const Derived& rhs) { return !(lhs == rhs); }

  /// Writes every field.
  void serialize(torch::serialize::OutputArchive& archive) const override {
    FieldWriter writer{archive};
    Derived::fields(static_cast<const Derived&>(*this), writer);
  }
  /// Reads what serialize(OutputArchive&) wrote. A field of `Derived::fields_added_later()`
  /// missing (a checkpoint from before the option existed) keeps its default; any other missing
  /// field throws.
  void serialize(torch::serialize::InputArchive& archive) override {
    FieldReader reader{archive, Derived::fields_added_later()};
    Derived::fields(static_cast<Derived&>(*this), reader);
  }
  /// The options added after checkpoints were first written; an algorithm with such options
  /// declares its own list.
  static std::vector<std::string> fields_added_later() { return {}; }
  /// The `lr` field (what LibTorch's LR schedulers read).
  double get_lr() const override { return static_cast<const Derived&>(*this).lr(); }
  /// Sets the `lr` field (what LibTorch's LR schedulers write).
  void set_lr(const double lr) override { static_cast<Derived&>(*this).lr(lr); }
};

}  // namespace detail

/// The base of the eight algorithms (the wrappers have their own): what they share with
/// LibTorch's `torch::optim::Optimizer`, done once.
///
/// Each algorithm `X` is built as `X(param_groups, defaults)`, where a group without options of
/// its own takes `defaults`, or `X(params, defaults)` for one group; both throw
/// `c10::ValueError` if `defaults` or a group's options are invalid, and
/// `std::invalid_argument` if a parameter is undefined, not a leaf, or in two groups.
///
/// - A step validates every parameter of every group (options, gradient shape, dtype and
///   device, state buffers) before it writes anything, so a step that throws leaves parameters
///   and state as they were. Parameters without a gradient are skipped, their state untouched.
///   Sparse gradients, non-floating-point parameters, parameters that cannot be written in place
///   (inference tensors, expanded ones), meta tensors and a parameter listed twice are refused.
/// - Parameter groups keep their own options (LibTorch gives non-builtin optimizers' groups the
///   defaults).
/// - Checkpoints (`torch::save(opt, path)` / `torch::load(opt, path)`) hold each group's options
///   and each parameter's state, keyed by position, and are checked whole before loading.
class OptimizerBase : public torch::optim::Optimizer {
 public:
  /// Adds a parameter group, keeping the group's own options (and checking them); a group
  /// without options takes the optimizer's defaults.
  ///
  /// Unlike torch::optim::Optimizer::add_param_group, which gives the groups of non-builtin
  /// optimizers the defaults. Call it on the holocron type: the base function is not virtual.
  /// \throws c10::ValueError if the group's options are invalid.
  /// \throws std::invalid_argument if the options are of another optimizer's type, or a
  /// parameter is undefined, not a leaf, or already in a group.
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

  /// Validates every parameter of every group, then updates them all.
  /// \param closure Optional; re-evaluates the model (with grad mode on) and returns the loss.
  /// \return What `closure` returned, or an undefined tensor without one.
  /// \throws c10::Error (nothing changed) on a sparse gradient, a non-floating-point
  /// parameter, a gradient or state buffer that does not match its parameter, or invalid
  /// group options.
  torch::Tensor step(LossClosure closure = nullptr) final;

  /// A step under mixed-precision loss scaling, as `torch.amp.GradScaler` drives torch's fused
  /// Adam: skipped entirely (nothing changes, step counters included) when `scaling.found_inf`
  /// is nonzero; otherwise the gradients are read unscaled by `scaling.grad_scale` inside the
  /// update, and are not modified. See functional::GradScaling.
  /// \param scaling The scale the gradients carry and whether any of them is inf or NaN.
  /// \param closure Optional; re-evaluates the model (with grad mode on) and returns the loss.
  /// \return What `closure` returned, or an undefined tensor without one.
  /// \throws c10::ValueError (nothing changed) if `grad_scale` or `found_inf` is not a
  /// one-element real tensor, or `grad_scale` is not finite and > 0; as step() otherwise.
  torch::Tensor step(const functional::GradScaling& scaling, LossClosure closure = nullptr);

  /// Writes the checkpoint: format version, algorithm name, each group's options and
  /// parameter shapes, each parameter's state.
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Reads and checks the whole checkpoint before replacing anything.
  /// \throws c10::Error if it was written by another algorithm, its groups or parameter shapes
  /// differ from this optimizer's, or a field is missing or invalid.
  void load(torch::serialize::InputArchive& archive) override;

  /// The algorithm's name as the reference spells it ("LAMB", ...).
  const char* name() const noexcept { return name_; }

  /// The `state_precision` of group `group_index` (the defaults' for a group without options):
  /// what Lookahead's slow weights and Scout's statistics follow.
  StatePrecision group_state_precision(size_t group_index) const;

  /// The `kahan_summation` of group `group_index` (the defaults' for a group without options).
  bool group_kahan_summation(size_t group_index) const;

  /// The Kahan compensations of `params` (functional::GradScaling::compensation): each one's
  /// `kahan_comp` where its group has `kahan_summation` and its state holds one, else undefined;
  /// empty when no group has the option. What Lookahead's and Scout's syncs take.
  std::vector<torch::Tensor> kahan_compensation(const std::vector<torch::Tensor>& params) const;

 protected:
  /// \cond INTERNAL

  /// `defaults`: the options of groups added without their own; `name`: the algorithm's name.
  OptimizerBase(std::unique_ptr<torch::optim::OptimizerOptions> defaults, const char* name);

  /// The loss scaling of the step in progress (empty outside step(scaling, closure)), with the
  /// group's maximize, clipping and Kahan compensations while it is updated.
  const functional::GradScaling& grad_scaling() const noexcept { return grad_scaling_; }
  /// Sets the Kahan compensations of the group about to be updated (GradScaling::compensation).
  void set_compensation(std::vector<torch::Tensor> compensation) {
    grad_scaling_.compensation = std::move(compensation);
  }
  /// Sets the scales of the 8-bit moments of the group about to be updated
  /// (GradScaling::state_absmax).
  void set_state_absmax(std::vector<torch::Tensor> absmax) { grad_scaling_.state_absmax = std::move(absmax); }
  /// The coded moment `name` of `param` under `precision` (its scales' field and map), or null
  /// where it is kept as floats.
  const detail::CodedMoment* coded(const char* name, StatePrecision precision, const torch::Tensor& param) const;
  /// The moments the algorithm's state may keep as codes (StatePrecision::blockwise8).
  virtual c10::ArrayRef<detail::CodedMoment> coded_moments() const = 0;
  /// The tensor field `name` of `state`, or null where it has none.
  virtual torch::Tensor* tensor_field(torch::optim::OptimizerParamState& state, const char* name) const = 0;

  /// Throws c10::ValueError naming the argument when options are invalid.
  virtual void check_options(const torch::optim::OptimizerOptions& options) const = 0;
  /// New options of the algorithm's type (for loading a checkpoint into).
  virtual std::unique_ptr<torch::optim::OptimizerOptions> make_options() const = 0;
  /// New, empty param state of the algorithm's type.
  virtual std::unique_ptr<torch::optim::OptimizerParamState> make_state() const = 0;
  /// Calls `on_tensor` on each defined tensor field of `state` and `on_counter` on each step
  /// counter (for the checks of step() and load()). step() may call it, name(), coded_moments()
  /// and tensor_field() for several parameters at once from the intra-op threads (groups of 512
  /// tensors or more): an override must only read.
  virtual void visit_fields(const torch::optim::OptimizerParamState& state,
                            const std::function<void(const char*, const torch::Tensor&)>& on_tensor,
                            const std::function<void(const char*, int64_t)>& on_counter) const = 0;
  /// Creates the buffers a parameter needs under these options and lacks.
  virtual void prepare_state(torch::optim::OptimizerParamState& state, const torch::Tensor& param,
                             const torch::optim::OptimizerOptions& options) const = 0;
  /// The bound of global gradient-norm clipping these options ask for (LAMB's `max_grad_norm`),
  /// if any.
  virtual std::optional<double> max_grad_norm(const torch::optim::OptimizerOptions&) const {
    return std::nullopt;
  }
  /// Whether these options ascend (`maximize`).
  virtual bool maximize(const torch::optim::OptimizerOptions&) const { return false; }
  /// These options' `state_precision`.
  virtual StatePrecision state_precision(const torch::optim::OptimizerOptions&) const = 0;
  /// These options' `kahan_summation`.
  virtual bool kahan_summation(const torch::optim::OptimizerOptions&) const = 0;
  /// Sets `options`' `state_precision` (a load keeps each group's).
  virtual void set_state_precision(torch::optim::OptimizerOptions& options, StatePrecision precision) const = 0;
  /// Updates one group: every param has a gradient and a prepared state.
  virtual void update_group(const torch::optim::OptimizerOptions& options,
                            const std::vector<torch::Tensor>& params,
                            const std::vector<torch::Tensor>& grads,
                            const std::vector<torch::optim::OptimizerParamState*>& states) = 0;

  /// \endcond

 private:
  void check_state_fits(const torch::optim::OptimizerParamState& state, const torch::Tensor& param,
                        StatePrecision precision, size_t group_index, size_t param_index) const;
  // A freshly read state's buffers, moved beside `param` and converted to what a group of
  // `precision` keeps (8-bit moments decoded or encoded, floats to its dtype).
  void convert_loaded(torch::optim::OptimizerParamState& state, const torch::Tensor& param,
                      StatePrecision precision) const;
  // For each max_grad_norm the groups hold, the norm of the unscaled gradients of those groups.
  std::map<double, torch::Tensor> clipping_norms() const;

  const char* name_;
  functional::GradScaling grad_scaling_;
  // The parameters a step updates, sorted to find one listed twice (kept: no allocation per step).
  std::vector<const c10::TensorImpl*> listed_;
  // A group's gradients and states found by a step, by position (kept: no allocation per step).
  std::vector<torch::Tensor> found_grads_;
  std::vector<torch::optim::OptimizerParamState*> found_states_;
};

namespace detail {

template <typename Options, typename = void>
struct has_amsgrad : std::false_type {};
template <typename Options>
struct has_amsgrad<Options, std::void_t<decltype(std::declval<const Options&>().amsgrad())>> : std::true_type {};
template <typename Options, typename = void>
struct has_momentum : std::false_type {};
template <typename Options>
struct has_momentum<Options, std::void_t<decltype(std::declval<const Options&>().momentum())>> : std::true_type {};

template <typename Options, typename = void>
struct has_max_grad_norm : std::false_type {};
template <typename Options>
struct has_max_grad_norm<Options, std::void_t<decltype(std::declval<const Options&>().max_grad_norm())>>
    : std::true_type {};

/// Binds an algorithm's options and state types to the type-erased OptimizerBase.
template <typename Options, typename State>
class Algorithm : public OptimizerBase {
 public:
  /// The algorithm's options type (`LAMBOptions`, ...).
  using OptionsType = Options;
  /// The algorithm's param state type (`LAMBParamState`, ...).
  using StateType = State;

 protected:
  /// \cond INTERNAL

  /// Checks `defaults`, then adds each group (see OptimizerBase::add_param_group).
  Algorithm(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
            const Options& defaults, const char* name)
      : OptimizerBase(std::make_unique<Options>(defaults), name) {
    check_options(defaults);
    for (const auto& group : param_groups) add_param_group(group);
  }

  /// Creates the buffers `param` needs under `options` and `state` lacks.
  virtual void init_state(State& state, const torch::Tensor& param,
                          const Options& options) const = 0;
  /// Updates one group through the functional layer: every param has a gradient and a
  /// prepared state.
  virtual void update(const Options& options, const std::vector<torch::Tensor>& params,
                      const std::vector<torch::Tensor>& grads,
                      const std::vector<State*>& states) = 0;

  /// Checks the options with the functional layer's check of their hyper-parameters.
  void check_options(const torch::optim::OptimizerOptions& options) const override {
    functional::check(static_cast<const Options&>(options).hyper());
    if constexpr (has_max_grad_norm<Options>::value) {
      const auto bound = static_cast<const Options&>(options).max_grad_norm();
      TORCH_CHECK_VALUE(!bound || (std::isfinite(*bound) && *bound > 0.0), name(),
                        ": max_grad_norm must be finite and > 0, got ", bound.value_or(0.0));
    }
  }
  /// New `Options` (for loading a checkpoint into).
  std::unique_ptr<torch::optim::OptimizerOptions> make_options() const override {
    return std::make_unique<Options>(0.0);
  }
  /// New, empty `State`.
  std::unique_ptr<torch::optim::OptimizerParamState> make_state() const override {
    return std::make_unique<State>();
  }
  /// Visits the fields `State::fields` lists.
  void visit_fields(const torch::optim::OptimizerParamState& state,
                    const std::function<void(const char*, const torch::Tensor&)>& on_tensor,
                    const std::function<void(const char*, int64_t)>& on_counter) const override {
    StateFieldVisitor visitor{on_tensor, on_counter};
    State::fields(static_cast<const State&>(state), visitor);
  }
  /// The options' `max_grad_norm`, for the algorithms that have one.
  std::optional<double> max_grad_norm(const torch::optim::OptimizerOptions& options) const override {
    if constexpr (has_max_grad_norm<Options>::value) {
      return static_cast<const Options&>(options).max_grad_norm();
    } else {
      return std::nullopt;
    }
  }
  /// The options' `maximize`.
  bool maximize(const torch::optim::OptimizerOptions& options) const override {
    return static_cast<const Options&>(options).maximize();
  }
  /// The options' `state_precision`.
  StatePrecision state_precision(const torch::optim::OptimizerOptions& options) const override {
    return static_cast<const Options&>(options).state_precision();
  }
  /// The options' `kahan_summation`.
  bool kahan_summation(const torch::optim::OptimizerOptions& options) const override {
    return static_cast<const Options&>(options).kahan_summation();
  }
  /// Sets the options' `state_precision`.
  void set_state_precision(torch::optim::OptimizerOptions& options, StatePrecision precision) const override {
    static_cast<Options&>(options).state_precision(precision);
  }
  /// Forwards to init_state() with the concrete types; with `kahan_summation`, also makes the
  /// compensation of a bfloat16 or float16 weight; under "8bit", encodes the moments it made.
  void prepare_state(torch::optim::OptimizerParamState& state, const torch::Tensor& param,
                     const torch::optim::OptimizerOptions& options) const override {
    auto& typed = static_cast<State&>(state);
    const auto& typed_options = static_cast<const Options&>(options);
    init_state(typed, param, typed_options);
    if (typed_options.kahan_summation() && at::isReducedFloatingType(param.scalar_type()) &&
        !typed.kahan_comp().defined()) {
      typed.kahan_comp(torch::zeros_like(param, at::MemoryFormat::Preserve));
    }
    encode_new_moments(typed, param, typed_options);
  }
  /// The moments `State::coded_moments()` lists.
  c10::ArrayRef<CodedMoment> coded_moments() const override { return State::coded_moments(); }
  /// The tensor field `name` of `state` (a State), or null.
  torch::Tensor* tensor_field(torch::optim::OptimizerParamState& state, const char* name) const override {
    return field_of(static_cast<State&>(state), name);
  }

  /// Under "8bit": each moment of `state` that its group keeps as codes but holds as floats (one
  /// just made as zeros) replaced by its codes and scales. A step refuses such floats in a state
  /// that existed (check_state_fits), so only new buffers are encoded here.
  void encode_new_moments(State& state, const torch::Tensor& param, const Options& options) const {
    if (options.state_precision() != StatePrecision::blockwise8) return;
    for (const auto& moment : State::coded_moments()) {
      auto* buffer = field_of(state, moment.name);
      if (buffer == nullptr || !buffer->defined() || buffer->scalar_type() == at::kByte ||
          coded(moment.name, options.state_precision(), param) == nullptr) {
        continue;
      }
      auto encoded = functional::quantize_blockwise(*buffer, moment.is_signed);
      *buffer = std::move(encoded.codes);
      *field_of(state, moment.absmax) = std::move(encoded.absmax);
    }
  }
  /// Whether an update under `options` hands the moment to the functional layer.
  static bool takes(const CodedMoment& moment, const Options& options) {
    switch (moment.kept_with) {
      case CodedMoment::KeptWith::amsgrad:
        if constexpr (has_amsgrad<Options>::value) return options.amsgrad();
        return true;
      case CodedMoment::KeptWith::momentum:
        if constexpr (has_momentum<Options>::value) return options.momentum() != 0.0;
        return true;
      case CodedMoment::KeptWith::always:
        break;
    }
    return true;
  }
  /// The scales of the moments of `states` held as codes that an update under `options` takes,
  /// in the order of the functional function's state lists (GradScaling::state_absmax).
  static std::vector<torch::Tensor> blockwise_scales(const std::vector<State*>& states, const Options& options) {
    std::vector<torch::Tensor> scales;
    for (const auto& moment : State::coded_moments()) {
      if (!takes(moment, options)) continue;
      for (auto* state : states) {
        const auto* codes = field_of(*state, moment.name);
        if (codes != nullptr && codes->defined() && codes->scalar_type() == at::kByte) {
          scales.push_back(*field_of(*state, moment.absmax));
        }
      }
    }
    return scales;
  }
  static torch::Tensor* field_of(State& state, const char* name) {
    torch::Tensor* found = nullptr;
    TensorFieldFinder finder{name, found};
    State::fields(state, finder);
    return found;
  }
  /// Forwards to update() with the concrete types.
  void update_group(const torch::optim::OptimizerOptions& options,
                    const std::vector<torch::Tensor>& params,
                    const std::vector<torch::Tensor>& grads,
                    const std::vector<torch::optim::OptimizerParamState*>& states) override {
    std::vector<State*> typed(states.size());
    for (size_t i = 0; i < states.size(); ++i) typed[i] = static_cast<State*>(states[i]);
    std::vector<torch::Tensor> compensation;
    if (static_cast<const Options&>(options).kahan_summation()) {
      for (size_t i = 0; i < params.size(); ++i) {
        compensation.push_back(at::isReducedFloatingType(params[i].scalar_type()) ? typed[i]->kahan_comp()
                                                                                   : torch::Tensor());
      }
    }
    set_compensation(std::move(compensation));
    set_state_absmax(static_cast<const Options&>(options).state_precision() == StatePrecision::blockwise8
                         ? blockwise_scales(typed, static_cast<const Options&>(options))
                         : std::vector<torch::Tensor>{});
    update(static_cast<const Options&>(options), params, grads, typed);
    if (!static_cast<const Options&>(options).kahan_summation()) {
      // Turned off, a group's weights go on from p: what the compensation held is dropped with
      // it, so that turning it on again starts from zeros, not from a stale residue.
      for (State* state : typed) {
        if (state->kahan_comp().defined()) state->kahan_comp(torch::Tensor());
      }
    }
  }
  /// \endcond
};

// A zero buffer shaped like `param`, of the dtype `options`' state_precision keeps, unless
// `buffer` already holds one.
template <typename Options>
void ensure_buffer(torch::Tensor& buffer, const torch::Tensor& param, const Options& options) {
  if (!buffer.defined()) {
    buffer = torch::zeros_like(param, param.options().dtype(state_dtype(options.state_precision(), param)),
                               at::MemoryFormat::Preserve);
  }
}

}  // namespace detail
}  // namespace holocron::optim
