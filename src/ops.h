#pragma once

// What the operators (torch.ops.holocron) share: arguments read by name from
// the boxed stack, step counters as ints or tensors, one-element tensors read
// and written on the host, and HOLOCRON_OPTIM_OP, which declares an operator
// by its schema next to its kernel (each algorithm's in src/algorithms/).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstring>
#include <functional>
#include <optional>
#include <type_traits>
#include <string>
#include <vector>

#include "functional/common.h"
#include "holocron/optim/functional.h"

namespace holocron::optim::ops {

namespace F = functional;
using at::TensorList;
using OptionalTensor = std::optional<at::Tensor>;
using OptionalTensors = std::optional<std::vector<at::Tensor>>;
using OptionalNames = std::optional<std::vector<std::string>>;

// torch.classes.holocron.TensorPins(tensors): holds one C++ reference to each
// tensor, and nothing else. In torch 2.13 a tensor made in Python and held
// only there has one C++ reference, its PyObject's, and every call that takes
// it in a list adds a second and drops it again: each 1 -> 2 -> 1 transition
// increfs and decrefs the PyObject under the GIL (c10/util/intrusive_ptr.h,
// has_pyobject), about 70 ns a tensor, 0.4 ms per step on 3000 parameters with
// two state buffers. The Python classes pin their state buffers, which they
// hold anyway, so that a step passes them at 2 -> 3 -> 2 (not their parameters:
// see BorrowedParams). An update op also takes its state lists from the pins
// themselves (`pinned_state`, HOLOCRON_PINNED): no list is converted from Python
// (about 0.16 us a tensor with cold caches, 1 ms a step on 3000 parameters with
// two buffers).
struct TensorPins : torch::CustomClassHolder {
  explicit TensorPins(std::vector<at::Tensor> pinned) : tensors(std::move(pinned)) {}
  std::vector<at::Tensor> tensors;
};

// torch.classes.holocron.BorrowedParams(params): a group's parameters for its update op
// (`param_refs`, HOLOCRON_PINNED), without a reference of its own. Converting the parameters'
// list at every call costs what TensorPins saves the state lists (a parameter held only by Python
// goes 1 -> 2 -> 1, and the decref takes the GIL again per tensor: about 0.5 ms a step on 3000),
// but C++ references would hide a parameter -> optimizer cycle (hooks, attributes a framework
// sets) from Python's garbage collector, and would make torch.utils.swap_tensors refuse the
// parameters (it requires no other reference, strong or weak). So these are references at +0,
// valid while the caller holds the parameters: FusedStep._params_of hands them to an op only
// after `holocron_params_are` (src/python_walks.cpp) found its list to be the same PyObjects,
// each still holding the same tensor (swap_tensors exchanges the tensors of two PyObjects).
class BorrowedParams : public torch::CustomClassHolder {
 public:
  explicit BorrowedParams(const std::vector<at::Tensor>& params);
  ~BorrowedParams() override;
  BorrowedParams(const BorrowedParams&) = delete;
  BorrowedParams& operator=(const BorrowedParams&) = delete;

  // Whether `owner` is the PyObject that params[i] was borrowed from, of the same type, and still
  // holds its tensor. `owner` must be alive (the caller's list holds it).
  bool borrowed_from(size_t i, const void* owner) const;
  // Whether each parameter had a PyObject whose tensor could be read (CPython's object layout,
  // torch's THPVariable): if not, borrowed_from is always false and the caller passes lists.
  bool usable() const { return usable_; }
  size_t size() const { return borrowed_.size(); }
  TensorList tensors() const { return borrowed_; }

 private:
  std::vector<const void*> owners_;  // each parameter's PyObject when borrowed
  std::vector<const void*> types_;   // and its type then
  std::vector<at::Tensor> borrowed_;  // references at +0 (c10::MaybeOwnedTraits::createBorrow)
  bool usable_ = true;
};

// Registers torch.classes.holocron.TensorPins and BorrowedParams, once: before the first schema
// that names them is parsed (define_op), whatever the order in which the operators' files
// register theirs.
void register_tensor_pins();

// A list argument of an op (Arguments::params, Arguments::state): the list given, or a view of
// tensors that a custom class holds (pinned state, borrowed parameters), kept alive by this.
class ListArgument {
 public:
  explicit ListArgument(functional::detail::HeldTensors given) : given_(std::move(given)), view_(given_) {}
  ListArgument(c10::intrusive_ptr<torch::CustomClassHolder> holder, TensorList view)
      : holder_(std::move(holder)), view_(view) {}
  ListArgument(const ListArgument&) = delete;
  ListArgument& operator=(const ListArgument&) = delete;
  // A moved vector keeps its buffer, so the view stays on it.
  ListArgument(ListArgument&& other) noexcept
      : given_(std::move(other.given_)), holder_(std::move(other.holder_)), view_(other.view_) {
    other.view_ = {};
  }
  ListArgument& operator=(ListArgument&&) = delete;

  operator TensorList() const { return view_; }  // NOLINT(google-explicit-constructor)
  size_t size() const { return view_.size(); }
  bool empty() const { return view_.empty(); }
  const at::Tensor& operator[](size_t i) const { return view_[i]; }
  const at::Tensor* begin() const { return view_.begin(); }
  const at::Tensor* end() const { return view_.end(); }

 private:
  functional::detail::HeldTensors given_;
  c10::intrusive_ptr<torch::CustomClassHolder> holder_;
  c10::ArrayRef<at::Tensor> view_;
};

F::ScaleClip clip_of(double low, double high);
double read_scalar(const at::Tensor& t);
void write_scalar(const at::Tensor& t, double value);
// read_scalar of a CPU tensor of a dtype it reads in place, without writing it (a copy-on-write
// storage stays shared); false for any other.
bool read_cpu_scalar(const at::Tensor& t, double& value);

// Each of `tensors`' value (read_scalar), after `check(i)`, which refuses a tensor that is not
// one-element: on the intra-op threads where there are many (check_each, which throws the error a
// loop in order would), since their first touch, cold, is what they cost a step over many small
// parameters. Device tensors are read on the calling thread.
template <class Check>
std::vector<double> read_scalars(TensorList tensors, const Check& check) {
  std::vector<double> values(tensors.size());
  const bool on_cpu = tensors.empty() || tensors[0].device().is_cpu();
  // On a worker of check_each's region, not merely inside a region: an op called inside one runs
  // its checks in order on its own thread, which reads any tensor.
  const bool on_workers = on_cpu && F::detail::host_work_in_parallel(tensors.size());
  F::detail::check_each(on_cpu ? tensors.size() : 0, [&](size_t i) {
    F::detail::prefetch_values(tensors, i);
    check(i);
    if (!on_workers || !at::in_parallel_region()) {
      values[i] = read_scalar(tensors[i]);
    } else {
      // Not one a worker reads: check_each takes every tensor again on the calling thread.
      TORCH_CHECK(read_cpu_scalar(tensors[i], values[i]), "read on the calling thread");
    }
  });
  if (!on_cpu) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      check(i);
      values[i] = read_scalar(tensors[i]);
    }
  }
  return values;
}
F::GradScaling scaling_of(const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
                          const OptionalTensor& grad_norm = std::nullopt, double max_grad_norm = 1.0);
bool skipped(const OptionalTensor& found_inf);
// Sharding::channel_layouts from the ops' flat list, three numbers per parameter.
std::vector<F::Sharding::ChannelLayout> channel_layouts_of(c10::ArrayRef<int64_t> flat, size_t params);
F::Sharding sharding_of(TensorList params, at::OptionalIntArrayRef numels,
                        const OptionalNames& shard_groups);
// LAMB's and RaLars' trust ratios go into one-element tensors, when given:
// checked before the update, written after it.
void check_ratio_targets(const char* optimizer, const std::optional<ListArgument>& targets, size_t n);
void store_ratios(const std::optional<ListArgument>& targets, const std::vector<double>& ratios);
// What the ops return: the trust ratios, or ones for a skipped step (what the
// fake kernels promise: one per tensor).
at::Tensor ratios_out(const std::vector<double>& ratios, TensorList params);

// Step counters as ints (the reference's state), or as one-element tensors
// (a compiled step's state: torch.compile would recompile for every new int).
// Tensors are read here and advanced by `store` once the update has run,
// unless found_inf skipped it.
class StepCounters {
 public:
  StepCounters(const char* optimizer, c10::IntArrayRef steps, const OptionalTensors& counters,
               size_t n)
      : counters_(counters) {
    if (!counters_) {
      steps_.assign(steps.begin(), steps.end());
      return;
    }
    TORCH_CHECK(steps.empty(), optimizer, ": pass the step counters as ints or as tensors, not both");
    TORCH_CHECK(counters_->size() == n, optimizer, ": got ", counters_->size(),
                " step tensors for ", n, " parameters");
    const TensorList counters_list = *counters_;
    for (const double value : read_scalars(counters_list, [&](size_t i) {
           TORCH_CHECK(counters_list[i].numel() == 1, optimizer, ": the step tensor of parameter ", i,
                       " has shape ", counters_list[i].sizes(), "; expected one element");
         })) {
      steps_.push_back(static_cast<int64_t>(value) + 1);
    }
  }
  c10::IntArrayRef steps() const { return steps_; }
  void store(const OptionalTensor& found_inf) const {
    if (!counters_ || skipped(found_inf)) return;
    for (size_t i = 0; i < steps_.size(); ++i) {
      write_scalar((*counters_)[i], static_cast<double>(steps_[i]));
    }
  }

 private:
  OptionalTensors counters_;
  std::vector<int64_t> steps_;
};

// An op's arguments, read by the names its schema gives them: an argument is
// named in the schema and in the line that reads it, and nowhere else (no
// wrapper parameter list, no Meta type list to keep in the same order).
class Arguments {
 public:
  Arguments(const c10::OperatorHandle& op, torch::jit::Stack* stack)
      : schema_(op.schema()), values_(torch::jit::last(*stack, schema_.arguments().size())) {
    check_pinned_lists();
  }

  functional::detail::HeldTensors tensors(const char* name) const { return at(name).toTensorVector(); }
  // `params` as given, or where the call gives `param_refs` (and `params` empty), the tensors it
  // borrows (valid while the caller holds them: see BorrowedParams).
  ListArgument params() const {
    const auto refs = borrowed_params();
    if (!refs) return ListArgument(tensors("params"));
    TORCH_CHECK(refs->usable(), schema_.name(), ": param_refs holds parameters it could not borrow");
    const TensorList view = refs->tensors();
    return ListArgument(refs, view);
  }
  // A state list (`Tensor(x!)[] name`): as given, or where the call names it in `pinned_lists`,
  // the tensors of `pinned_state` from the matching `pinned_at`, one per parameter.
  ListArgument state(const char* name) const {
    if (const auto pinned = pinned_offset(name)) {
      auto pins = at("pinned_state").toCustomClass<TensorPins>();
      const TensorList view(pins->tensors.data() + *pinned, param_count());
      return ListArgument(std::move(pins), view);
    }
    return ListArgument(tensors(name));
  }
  // An optional state list (`Tensor(x!)[]? name`): none, or as state() takes it.
  std::optional<ListArgument> optional_state(const char* name) const {
    if (!pinned_offset(name) && at(name).isNone()) return std::nullopt;
    return state(name);
  }
  // `grads`, or where it is None each parameter's own .grad, read here: a Python step that
  // gathers p.grad for 3000 small parameters pays about half a millisecond, a tenth of the step.
  // A parameter without a gradient is refused before anything is written.
  functional::detail::HeldTensors grads(const char* optimizer, TensorList params) const {
    if (auto given = optional_tensors("grads")) return std::move(*given);
    functional::detail::HeldTensors read(params.size());
    functional::detail::check_each(params.size(), [&](size_t i) {
      functional::detail::prefetch_metadata(params, i);
      const auto& grad = params[i].grad();
      TORCH_CHECK(grad.defined(), optimizer, ": grads=None takes each parameter's .grad, and params[", i,
                  "] has none (pass the gradients, or only parameters that have one)");
      read[i] = grad;
    });
    return read;
  }
  at::Tensor tensor(const char* name) const { return at(name).toTensor(); }
  double real(const char* name) const { return at(name).toDouble(); }
  // `lr`, or the value of `lr_tensor` where one is given (an op reading it declares
  // HOLOCRON_LR_TENSOR).
  double lr() const {
    if (const auto lr = optional_tensor("lr_tensor")) {
      TORCH_CHECK(lr->numel() == 1 && !lr->is_complex() && lr->scalar_type() != at::kBool,
                  "lr_tensor must be a real one-element tensor, got ", lr->sizes(), " ", lr->scalar_type());
      return read_scalar(*lr);
    }
    return real("lr");
  }
  std::vector<double> reals(const char* name) const { return at(name).toDoubleVector(); }
  bool flag(const char* name) const { return at(name).toBool(); }
  std::vector<bool> flags(const char* name) const {
    const auto list = at(name).toBoolList();
    return {list.begin(), list.end()};
  }
  int64_t integer(const char* name) const { return at(name).toInt(); }
  std::vector<int64_t> integers(const char* name) const { return at(name).toIntVector(); }
  std::string string(const char* name) const { return at(name).toStringRef(); }

  // Optional arguments (`T?` in the schema): none, or what the reader above returns.
  OptionalTensors optional_tensors(const char* name) const { return optional(name, &Arguments::tensors); }
  OptionalTensor optional_tensor(const char* name) const { return optional(name, &Arguments::tensor); }
  std::optional<double> optional_real(const char* name) const { return optional(name, &Arguments::real); }
  std::optional<at::ScalarType> optional_dtype(const char* name) const {
    return optional(name, [](const Arguments& self, const char* key) { return self.at(key).toScalarType(); });
  }
  std::optional<std::vector<int64_t>> optional_integers(const char* name) const {
    return optional(name, &Arguments::integers);
  }
  OptionalNames optional_strings(const char* name) const {
    return optional(name, [](const Arguments& self, const char* key) {
      std::vector<std::string> names;
      for (const auto& item : self.at(key).toListRef()) names.push_back(item.toStringRef());
      return names;
    });
  }

  // The functional layer's hyper-parameters `Hyper` of `optimizer` (an XHyper), each field from
  // the schema's argument of its name, so that an op's kernel restates none of them (and cannot
  // forget one: a field the schema lacks fails the first call, and test_api.cpp's
  // HyperParametersAreTheOperatorsArguments holds every schema to its struct: types, the defaults
  // the schema gives, no argument read by nothing). `lr` is read through lr().
  template <typename Hyper>
  Hyper hyper(const char* optimizer) const {
    Hyper hyper{};
    HyperReader reader{*this, optimizer};
    detail::visit_fields<Hyper>(hyper, reader);
    return hyper;
  }

  // The loss scaling and the whole-tensor sums' sharding every update op may take.
  F::GradScaling scaling() const {
    auto scaling = schema_.argumentIndexWithName("grad_norm")
                       ? scaling_of(optional_tensor("grad_scale"), optional_tensor("found_inf"),
                                    optional_tensor("grad_norm"), real("max_grad_norm"))
                       : scaling_of(optional_tensor("grad_scale"), optional_tensor("found_inf"));
    if (schema_.argumentIndexWithName("maximize")) scaling.maximize = flag("maximize");
    if (schema_.argumentIndexWithName("kahan_comps")) scaling.compensation = compensation();
    if (schema_.argumentIndexWithName("state_absmax")) {
      scaling.state_absmax = optional_tensors("state_absmax").value_or(std::vector<at::Tensor>{});
    }
    return scaling;
  }
  F::Sharding sharding(TensorList params) const {
    const auto numels = optional_integers("numels");
    at::OptionalIntArrayRef counts;
    if (numels) counts = *numels;
    auto sharding = sharding_of(params, counts, optional_strings("shard_groups"));
    if (schema_.argumentIndexWithName("channel_layouts")) {
      if (const auto layouts = optional_integers("channel_layouts")) {
        sharding.channel_layouts = channel_layouts_of(*layouts, params.size());
      }
    }
    return sharding;
  }
  OptionalTensor found_inf() const { return optional_tensor("found_inf"); }
  // `kahan_comps` as GradScaling::compensation: none, or one per parameter, a tensor without
  // elements standing for no compensation (torch's functionalization of a mutable `Tensor?[]`
  // fails on None entries, so the ops take `Tensor[]` with such placeholders).
  std::vector<at::Tensor> compensation() const {
    auto list = optional_tensors("kahan_comps").value_or(std::vector<at::Tensor>{});
    for (auto& t : list) {
      if (t.numel() == 0) t = at::Tensor();
    }
    return list;
  }

 private:
  // How each type of hyper-parameter is taken from the schema (hyper()).
  struct HyperReader {
    const Arguments& a;
    const char* optimizer;
    void operator()(const char* name, double& value) const {
      value = std::strcmp(name, "lr") == 0 ? a.lr() : a.real(name);
    }
    void operator()(const char* name, bool& value) const { value = a.flag(name); }
    void operator()(const char* name, std::optional<double>& value) const { value = a.optional_real(name); }
    // Bounds always given (LAMB's and RaLars' scale_clip): the schema's clip_low and clip_high.
    void operator()(const char*, F::ScaleClip& value) const {
      value = clip_of(a.real("clip_low"), a.real("clip_high"));
    }
    // Optional bounds (LARS' scale_clip): a list of none or two.
    void operator()(const char* name, std::optional<F::ScaleClip>& value) const {
      const auto bounds = a.reals(name);
      TORCH_CHECK_VALUE(bounds.empty() || bounds.size() == 2, optimizer, ": ", name,
                        " must hold two values (low, high), got ", bounds.size());
      value = bounds.empty() ? std::nullopt : std::optional<F::ScaleClip>(clip_of(bounds[0], bounds[1]));
    }
  };

  template <typename Read>
  auto optional(const char* name, Read read) const
      -> std::optional<std::decay_t<std::invoke_result_t<Read, const Arguments&, const char*>>> {
    if (at(name).isNone()) return std::nullopt;
    return std::invoke(read, *this, name);
  }

  // Each name in `pinned_lists` is one of the op's state lists (a `Tensor[]` other than params, or
  // an optional one that it reads through optional_state),
  // named once: one the kernel does not read through state() would be silently not updated. Each
  // is given as an empty list, and its `pinned_at` offset takes one tensor per parameter from
  // `pinned_state`.
  void check_pinned_lists() const {
    const auto pinned = schema_.argumentIndexWithName("pinned_lists");
    if (!pinned || values_[*pinned].isNone()) return;
    const auto names = values_[*pinned].toListRef();
    for (size_t k = 0; k < names.size(); ++k) {
      const auto& name = names[k].toStringRef();
      const auto index = schema_.argumentIndexWithName(name);
      // The optional lists that ops read through optional_state: LAMB's and RaLars' trust ratios.
      const bool optional_state = name == "local_lrs";
      const c10::TypePtr tensor_list = c10::ListType::ofTensors();
      const c10::TypePtr wanted = optional_state ? c10::OptionalType::create(tensor_list) : tensor_list;
      TORCH_CHECK(index && name != "params" && *schema_.arguments()[*index].type() == *wanted,
                  schema_.name(), ": pinned_lists names '", name, "', which is not one of its state lists");
      for (size_t j = 0; j < k; ++j) {
        TORCH_CHECK(names[j].toStringRef() != name, schema_.name(), ": pinned_lists names '", name, "' twice");
      }
      const auto& given = values_[*index];
      TORCH_CHECK(!given.isNone() && given.toListRef().empty(), schema_.name(), ": ", name,
                  " is named in pinned_lists, so it must be given as an empty list (got ",
                  given.isNone() ? std::string("None") : std::to_string(given.toListRef().size()) + " tensors", ")");
    }
    if (names.empty()) return;
    TORCH_CHECK(!at("pinned_state").isNone(), schema_.name(), ": pinned_lists names ", names[0].toStringRef(),
                " but no pinned_state is given");
    const auto offsets = at("pinned_at").toIntList();
    TORCH_CHECK(offsets.size() == names.size(), schema_.name(), ": got ", offsets.size(),
                " pinned_at offsets for ", names.size(), " pinned_lists");
    const size_t pinned_count = at("pinned_state").toCustomClass<TensorPins>()->tensors.size();
    const size_t count = param_count();
    for (size_t k = 0; k < names.size(); ++k) {
      const int64_t offset = offsets[k];
      TORCH_CHECK(offset >= 0 && static_cast<size_t>(offset) + count <= pinned_count, schema_.name(), ": ",
                  names[k].toStringRef(), " at pinned_at ", offset, " takes ", count,
                  " tensors, but pinned_state holds ", pinned_count);
    }
  }

  // `param_refs`, where the schema has it and the call gives it; `params` must then be empty.
  c10::intrusive_ptr<BorrowedParams> borrowed_params() const {
    const auto index = schema_.argumentIndexWithName("param_refs");
    if (!index || values_[*index].isNone()) return {};
    TORCH_CHECK(at("params").toListRef().empty(), schema_.name(), ": params must be an empty list when param_refs is "
                "given (got ", at("params").toListRef().size(), " tensors)");
    return values_[*index].toCustomClass<BorrowedParams>();
  }
  size_t param_count() const {
    const auto refs = borrowed_params();
    return refs ? refs->size() : at("params").toListRef().size();
  }

  // Where the tensors of the state list `name` start in `pinned_state`, if the call pins it.
  std::optional<size_t> pinned_offset(const char* name) const {
    const auto pinned = schema_.argumentIndexWithName("pinned_lists");
    if (!pinned || values_[*pinned].isNone()) return std::nullopt;
    const auto names = values_[*pinned].toListRef();
    for (size_t k = 0; k < names.size(); ++k) {
      if (names[k].toStringRef() == name) return static_cast<size_t>(at("pinned_at").toIntList().get(k));
    }
    return std::nullopt;
  }

  const c10::IValue& at(const char* name) const {
    const auto index = schema_.argumentIndexWithName(name);
    // A kernel reading a name its schema lacks: a bug here, caught by any call.
    TORCH_INTERNAL_ASSERT(index.has_value(), schema_.name(), " has no argument '", name, "'");
    return values_[*index];
  }

  const c10::FunctionSchema& schema_;
  c10::ArrayRef<c10::IValue> values_;
};

// What a kernel returns: a Tensor, a float, or None for `-> ()`.
using Kernel = c10::IValue (*)(const Arguments&);

// Registers `schema` (its only declaration) with `kernel` for every device, and
// the Meta kernel that serves every op (shapes never change; what is returned
// is one ratio per tensor or a float).
void define_op(torch::Library& library, const char* schema);
void implement_op(torch::Library& library, const char* schema, Kernel kernel);
void implement_meta(torch::Library& library, const char* schema);

}  // namespace holocron::optim::ops

// Arguments every update op takes after its own: loss scaling (GradScaler),
// and for those with whole-tensor sums, the DTensor sharding of those sums.
#define HOLOCRON_SCALING "Tensor? grad_scale=None, Tensor? found_inf=None"
// Global gradient-norm clipping (GradScaling's grad_norm and max_grad_norm),
// for the ops of algorithms with a max_grad_norm option. Arguments added to
// an op go after all of its others: torch.compile's on-disk caches may hold
// code that calls it positionally as it was.
#define HOLOCRON_CLIPPING "Tensor? grad_norm=None, float max_grad_norm=1.0"
// torch.optim's maximize, which every update op takes (GradScaling's).
#define HOLOCRON_MAXIMIZE "bool maximize=False"
#define HOLOCRON_SHARDING "int[]? numels=None, str[]? shard_groups=None"
// Kahan-compensated weights (GradScaling::compensation): one per parameter, a tensor without
// elements where its weight is not compensated (Arguments::compensation).
#define HOLOCRON_KAHAN "Tensor(k!)[]? kahan_comps=None"
// 8-bit state (GradScaling::state_absmax): the scales of the uint8 state tensors, in the order of
// the op's state lists.
#define HOLOCRON_BLOCKWISE "Tensor(q!)[]? state_absmax=None"
// The learning rate as a one-element tensor (read at run time), which compiled steps hand over
// where the group holds one: a float argument would be a constant of the graph, or refused.
#define HOLOCRON_LR_TENSOR "Tensor? lr_tensor=None"
// State lists taken from pinned tensors (TensorPins, Arguments::state): `pinned_lists` names the
// op's state lists given so (each as an empty list), `pinned_at` where each one's tensors start in
// `pinned_state`. For eager calls: the tensors written through the pins are in no alias annotation,
// so traced calls (torch.compile, fake tensors, functionalization) pass the lists themselves.
// `state_as_param`: every state tensor must have its parameter's dtype (functional::StateAsParam).
// `param_refs`: the parameters, borrowed (BorrowedParams), where `params` is given empty.
#define HOLOCRON_PINNED                                                                  \
  "__torch__.torch.classes.holocron.TensorPins? pinned_state=None, str[]? pinned_lists=None, " \
  "int[] pinned_at=[], bool state_as_param=False, "                                        \
  "__torch__.torch.classes.holocron.BorrowedParams? param_refs=None"
// Where each shard lies among its whole tensor's output channels (Sharding::channel_layouts): for
// each parameter, its whole tensor's channels, then first and width.
#define HOLOCRON_CHANNEL_LAYOUTS "int[]? channel_layouts=None"

// Declares the operator `schema` with `kernel` (at namespace scope).
#define HOLOCRON_OPTIM_OP(schema, kernel)                                              \
  TORCH_LIBRARY_FRAGMENT(holocron, m) { ::holocron::optim::ops::define_op(m, schema); } \
  TORCH_LIBRARY_IMPL(holocron, CompositeExplicitAutograd, m) {                         \
    ::holocron::optim::ops::implement_op(m, schema, kernel);                           \
  }                                                                                    \
  TORCH_LIBRARY_IMPL(holocron, Meta, m) { ::holocron::optim::ops::implement_meta(m, schema); }
