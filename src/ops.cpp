// The shared machinery of the operators (torch.ops.holocron; see ops.h), and
// the operators that are not one algorithm's: validation of a whole group,
// scalar writes, and the wrappers' (Lookahead, Scout). Each algorithm's
// operator is declared next to the rest of it, in src/algorithms/.

#include "ops.h"

#include <torch/custom_class.h>

#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>

#include "functional/common.h"

namespace holocron::optim::ops {

F::ScaleClip clip_of(double low, double high) { return {low, high}; }

namespace {

// One-element CPU tensors are read and written in place: a dispatched
// item()/fill_() per parameter would cost more than the update of a small one.
// A read takes const_data_ptr, which leaves a copy-on-write storage shared.
template <bool kWrites, typename F>
bool with_cpu_scalar(const at::Tensor& t, F f) {
  if (!t.device().is_cpu()) return false;
  const auto pointer = [&](auto element) {
    using T = decltype(element);
    if constexpr (kWrites) {
      return t.data_ptr<T>();
    } else {
      return t.const_data_ptr<T>();
    }
  };
  switch (t.scalar_type()) {
    case at::kFloat: f(pointer(float{})); return true;
    case at::kDouble: f(pointer(double{})); return true;
    case at::kLong: f(pointer(int64_t{})); return true;
    case at::kBFloat16: f(pointer(at::BFloat16{})); return true;
    case at::kHalf: f(pointer(at::Half{})); return true;
    default: return false;
  }
}

}  // namespace

bool read_cpu_scalar(const at::Tensor& t, double& value) {
  return with_cpu_scalar<false>(t, [&](const auto* ptr) { value = static_cast<double>(*ptr); });
}

double read_scalar(const at::Tensor& t) {
  double value = 0.0;
  if (read_cpu_scalar(t, value)) return value;
  return t.item<double>();
}

void write_scalar(const at::Tensor& t, double value) {
  if (t.is_inference() || !with_cpu_scalar<true>(t, [&](auto* ptr) {
        using T = std::remove_pointer_t<decltype(ptr)>;
        *ptr = static_cast<T>(value);
      })) {
    t.fill_(value);
    return;
  }
  t.unsafeGetTensorImpl()->bump_version();
}

namespace {

// Per-tensor trust ratios, on the parameters' device: torch.compile's fake
// kernels put a new tensor where the inputs are.
at::Tensor as_tensor(const std::vector<double>& values, TensorList params) {
  auto out = at::tensor(c10::ArrayRef<double>(values), at::TensorOptions().dtype(at::kDouble));
  return params.empty() ? out : out.to(params[0].device());
}

}  // namespace

F::GradScaling scaling_of(const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
                          const OptionalTensor& grad_norm, double max_grad_norm) {
  F::GradScaling scaling(grad_scale.value_or(at::Tensor()), found_inf.value_or(at::Tensor()));
  scaling.grad_norm = grad_norm.value_or(at::Tensor());
  scaling.max_grad_norm = max_grad_norm;
  return scaling;
}

bool skipped(const OptionalTensor& found_inf) {
  return found_inf && found_inf->defined() && read_scalar(*found_inf) != 0.0;
}

namespace {

// Where a group all-reduces sums of tensors on `device`: there when its backend
// takes that device type, else on a device it has a backend for. FSDP2's CPU
// offload keeps the shards (and so their sums) on the CPU while the mesh is on
// the GPU, and an NCCL-only group takes CUDA tensors only: the few bytes go to
// the group's device (the one it is bound to, else that type's current one)
// and come back.
at::Device collective_device(c10d::ProcessGroup& group, at::Device device) {
  if (!group.hasBackends() || group.hasBackendForDeviceType(device.type())) return device;
  const auto bound = group.getBoundDeviceId();
  if (bound) return *bound;
  const auto types = group.getDeviceTypes();
  return types.empty() ? device : types.front();
}

}  // namespace

std::vector<F::Sharding::ChannelLayout> channel_layouts_of(c10::ArrayRef<int64_t> flat, size_t params) {
  TORCH_CHECK(flat.size() == 3 * params, "channel_layouts must hold three numbers per parameter (",
              3 * params, " for ", params, "), got ", flat.size());
  std::vector<F::Sharding::ChannelLayout> layouts;
  layouts.reserve(params);
  for (size_t i = 0; i < params; ++i) {
    layouts.push_back({.channels = flat[3 * i], .first = flat[3 * i + 1], .width = flat[3 * i + 2]});
  }
  return layouts;
}

// Shards of DTensors (FSDP2) and flat partitions (DeepSpeed ZeRO): the partial
// sums are all-reduced over each named process group (torch.distributed's
// group_name) in turn, on a device its backend takes.
F::Sharding sharding_of(TensorList params, at::OptionalIntArrayRef numels,
                        const OptionalNames& shard_groups) {
  F::Sharding sharding;
  if (numels) sharding.numels.assign(numels->begin(), numels->end());
  if (!shard_groups || shard_groups->empty()) return sharding;
  const auto device = params.empty() ? at::Device(at::kCPU) : params[0].device();
  // Resolved here, before the op writes anything: an unknown group, or a device
  // this process cannot use, throws with nothing changed.
  std::vector<std::pair<c10::intrusive_ptr<c10d::ProcessGroup>, at::Device>> groups;
  for (const auto& name : *shard_groups) {
    auto group = c10d::resolve_process_group(name);
    const auto on = collective_device(*group, device);
    if (on != device) at::empty({0}, at::TensorOptions().device(on));
    groups.emplace_back(std::move(group), on);
  }
  sharding.all_reduce = [groups = std::move(groups)](at::Tensor& sums) {
    for (const auto& [group, on] : groups) {
      std::vector<at::Tensor> buffer{sums.to(on)};
      group->allreduce(buffer)->wait();
      sums = buffer[0].to(at::kCPU);
    }
  };
  return sharding;
}

// LAMB's and RaLars' trust ratios go into one-element tensors, when given:
// checked before the update, written after it.
void check_ratio_targets(const char* optimizer, const std::optional<ListArgument>& targets, size_t n) {
  if (!targets) return;
  TORCH_CHECK(targets->size() == n, optimizer, ": got ", targets->size(), " local_lr tensors for ",
              n, " parameters");
  const TensorList list = *targets;
  F::detail::check_each(list.size(), [&](size_t i) {
    TORCH_CHECK(list[i].numel() == 1, optimizer, ": the local_lr tensor of parameter ", i, " has shape ",
                list[i].sizes(), "; expected one element");
  });
}

void store_ratios(const std::optional<ListArgument>& targets, const std::vector<double>& ratios) {
  if (!targets || ratios.empty()) return;  // empty: found_inf skipped the step
  const TensorList list = *targets;
  for (size_t i = 0; i < ratios.size(); ++i) {
    F::detail::prefetch_values(list, i);
    write_scalar(list[i], ratios[i]);
  }
}

// What the ops return: the trust ratios, or ones for a skipped step (what the
// fake kernels promise: one per tensor).
at::Tensor ratios_out(const std::vector<double>& ratios, TensorList params) {
  return as_tensor(ratios.empty() ? std::vector<double>(params.size(), 1.0) : ratios, params);
}

namespace {

// Stores values[i] into the one-element tensor targets[i], in place.
c10::IValue write_scalars(const Arguments& a) {
  const auto targets = a.tensors("targets");
  const auto values = a.reals("values");
  TORCH_CHECK(targets.size() == values.size(), "write_scalars_: got ", values.size(),
              " values for ", targets.size(), " tensors");
  for (const auto& t : targets) {
    TORCH_CHECK(t.numel() == 1, "write_scalars_: a target has shape ", t.sizes(),
                "; expected one element");
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    F::detail::prefetch_values(targets, i);
    write_scalar(targets[i], values[i]);
  }
  return {};
}

// What every update op checks before it writes, for one group, so that a
// step over several groups can check them all before updating any.
c10::IValue validate_group(const Arguments& a) {
  const auto optimizer = a.string("optimizer");
  const auto params = a.params();
  F::detail::check_group(optimizer.c_str(), params, a.grads(optimizer.c_str(), params), {});
  F::detail::check_flat_state(optimizer.c_str(), params, a.tensors("buffers"), a.integers("owners"),
                              a.optional_dtype("state_dtype"));
  for (int64_t step : a.integers("steps")) {
    TORCH_CHECK(step >= 1, optimizer, ": a state 'step' is ", step - 1,
                "; counters cannot be negative");
  }
  return {};
}

c10::IValue lookahead_sync(const Arguments& a) {
  F::lookahead_sync_(a.tensors("fast"), a.tensors("slow"), a.real("sync_rate"), a.compensation());
  return {};
}

// Scout's statistics, held here: F::ScoutStats only refers to them.
struct ScoutLists {
  explicit ScoutLists(const Arguments& a)
      : prev(a.tensors("prev")), mean(a.tensors("mean")), m2(a.tensors("m2")),
        max(a.tensors("max")), min(a.tensors("min")) {}
  F::ScoutStats stats() const { return {prev, mean, m2, max, min}; }
  std::vector<at::Tensor> prev, mean, m2, max, min;
};

c10::IValue scout_accumulate(const Arguments& a) {
  const ScoutLists lists(a);
  F::scout_accumulate_(a.tensors("fast"), lists.stats(), a.integer("count"));
  return {};
}

c10::IValue scout_coherence(const Arguments& a) {
  const ScoutLists lists(a);
  return F::scout_coherence(lists.stats(), a.integer("count"),
                            sharding_of(lists.prev, std::nullopt, a.optional_strings("shard_groups")));
}

// The wrappers' bookkeeping after the base optimizer's step, with the counter
// (and Scout's last rate) in tensors and every decision here: a compiled step
// then has no branch on Python values. Nothing moves when found_inf is set.
int64_t advanced_counter(const at::Tensor& fast_steps, int64_t sync_period) {
  TORCH_CHECK_VALUE(sync_period >= 1, "Invalid sync_period: ", sync_period);
  TORCH_CHECK(fast_steps.numel() == 1, "fast_steps must hold one element, it has shape ",
              fast_steps.sizes());
  return static_cast<int64_t>(read_scalar(fast_steps)) + 1;
}

c10::IValue lookahead_step(const Arguments& a) {
  const auto fast_steps = a.tensor("fast_steps");
  const int64_t sync_period = a.integer("sync_period");
  const int64_t count = advanced_counter(fast_steps, sync_period);
  if (skipped(a.found_inf())) return {};
  if (count % sync_period == 0) {
    F::lookahead_sync_(a.tensors("fast"), a.tensors("slow"), a.real("sync_rate"), a.compensation());
  }
  write_scalar(fast_steps, static_cast<double>(count));
  return {};
}

c10::IValue scout_step(const Arguments& a) {
  const auto fast_steps = a.tensor("fast_steps");
  const int64_t sync_period = a.integer("sync_period");
  const int64_t count = advanced_counter(fast_steps, sync_period);
  if (skipped(a.found_inf())) return {};
  const auto fast = a.tensors("fast");
  const ScoutLists lists(a);
  const auto stats = lists.stats();
  const auto& prev = lists.prev;
  const int64_t changes_before = (count - 1) % sync_period;
  // Before the statistics change: a group that cannot be used throws with nothing changed.
  const auto sharding = sharding_of(prev, std::nullopt, a.optional_strings("shard_groups"));
  F::detail::check_group("Scout", fast, fast, {{"slow weights", a.tensors("slow")}});
  F::scout_accumulate_(fast, stats, changes_before);
  if (count % sync_period == 0) {
    const double coherence = F::scout_coherence(stats, changes_before + 1, sharding);
    const double rate = std::max(1.0 - coherence, a.real("sync_rate"));
    F::lookahead_sync_(fast, a.tensors("slow"), rate);
    write_scalar(a.tensor("last_sync_rate"), rate);
    // The next period's changes start from the synchronised weights.
    for (size_t i = 0; i < fast.size(); ++i) prev[i].copy_(fast[i]);
  }
  write_scalar(fast_steps, static_cast<double>(count));
  return {};
}

struct Declaration {
  const char* schema;
  Kernel kernel;
};

// The operators that are not one algorithm's: each one's schema (its only
// declaration) and kernel.
const Declaration kOps[] = {
    {"validate_group(str optimizer, Tensor[] params, Tensor[]? grads, Tensor[] buffers, "
     "int[] owners, int[] steps, ScalarType? state_dtype=None) -> ()",
     &validate_group},
    {"write_scalars_(Tensor(a!)[] targets, float[] values) -> ()", &write_scalars},
    {"lookahead_sync_(Tensor(a!)[] fast, Tensor(b!)[] slow, float sync_rate, " HOLOCRON_KAHAN ") -> ()",
     &lookahead_sync},
    {"lookahead_step_(Tensor(a!)[] fast, Tensor(b!)[] slow, Tensor(c!) fast_steps, "
     "int sync_period, float sync_rate, Tensor? found_inf=None, " HOLOCRON_KAHAN ") -> ()",
     &lookahead_step},
    {"scout_step_(Tensor(a!)[] fast, Tensor(b!)[] slow, Tensor(c!)[] prev, Tensor(d!)[] mean, "
     "Tensor(e!)[] m2, Tensor(f!)[] max, Tensor(g!)[] min, Tensor(h!) fast_steps, "
     "Tensor(i!) last_sync_rate, int sync_period, float sync_rate, Tensor? found_inf=None, "
     "str[]? shard_groups=None) -> ()",
     &scout_step},
    {"scout_accumulate_(Tensor[] fast, Tensor(a!)[] prev, Tensor(b!)[] mean, Tensor(c!)[] m2, "
     "Tensor(d!)[] max, Tensor(e!)[] min, int count) -> ()",
     &scout_accumulate},
    {"scout_coherence(Tensor[] prev, Tensor[] mean, Tensor[] m2, Tensor[] max, Tensor[] min, "
     "int count, str[]? shard_groups=None) -> float",
     &scout_coherence},
};

std::string name_of(const char* schema) {
  const std::string text(schema);
  return text.substr(0, text.find('('));
}

// Runs a kernel on the boxed stack: its arguments are replaced by its return value.
class Boxed final : public c10::OperatorKernel {
 public:
  explicit Boxed(Kernel kernel) : kernel_(kernel) {}
  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
    const Arguments arguments(op, stack);
    const auto as_param = op.schema().argumentIndexWithName("state_as_param");
    const F::detail::StateAsParam scope(as_param && arguments.flag("state_as_param"));
    c10::IValue result = kernel_(arguments);
    torch::jit::drop(*stack, op.schema().arguments().size());
    if (!op.schema().returns().empty()) stack->push_back(std::move(result));
  }

 private:
  Kernel kernel_;
};

// Fake-tensor tracing (torch.compile, opcheck) needs no math: shapes never
// change and what is returned is one ratio per tensor (on the meta device)
// or a float, which cannot be faked (tracing would fold in this 0: compiled
// steps use scout_step_, which keeps the coherence inside).
void meta_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t count = schema.arguments().size();
  const auto first = torch::jit::peek(*stack, 0, count);
  int64_t tensors = first.isTensorList() ? static_cast<int64_t>(first.toListRef().size()) : 0;
  // Parameters handed borrowed (`param_refs`) leave the list empty.
  if (const auto refs = schema.argumentIndexWithName("param_refs")) {
    const auto& given = torch::jit::peek(*stack, *refs, count);
    if (!given.isNone()) tensors = static_cast<int64_t>(given.toCustomClass<BorrowedParams>()->size());
  }
  torch::jit::drop(*stack, count);
  if (schema.returns().empty()) return;
  if (schema.returns()[0].type()->kind() == c10::TypeKind::FloatType) {
    stack->emplace_back(0.0);
    return;
  }
  stack->emplace_back(at::empty({tensors}, at::TensorOptions().dtype(at::kDouble).device(at::kMeta)));
}

}  // namespace

void define_op(torch::Library& library, const char* schema) {
  register_tensor_pins();
  library.def(schema);
}

void implement_op(torch::Library& library, const char* schema, Kernel kernel) {
  library.impl(name_of(schema).c_str(),
               torch::CppFunction::makeFromBoxedFunctor(std::make_unique<Boxed>(kernel)));
}

void implement_meta(torch::Library& library, const char* schema) {
  library.impl(name_of(schema).c_str(), torch::CppFunction::makeFromBoxedFunction<&meta_kernel>());
}

TORCH_LIBRARY(holocron, m) {
  for (const auto& op : kOps) define_op(m, op.schema);
  // Which CPU kernels run the updates (see functional.h): for tests and benchmarks.
  m.def("cpu_capability() -> str", [] { return F::cpu_capability(); });
  m.def("set_cpu_capability(str name) -> ()",
        [](const std::string& name) { F::set_cpu_capability(name); });
  m.def("available_cpu_capabilities() -> str[]", [] { return F::available_cpu_capabilities(); });
}

// The functional layer is written with ATen ops, so one kernel serves every device.
TORCH_LIBRARY_IMPL(holocron, CompositeExplicitAutograd, m) {
  for (const auto& op : kOps) implement_op(m, op.schema, op.kernel);
}

TORCH_LIBRARY_IMPL(holocron, Meta, m) {
  for (const auto& op : kOps) implement_meta(m, op.schema);
}

}  // namespace holocron::optim::ops

namespace holocron::optim::ops {

namespace {

// Where a tensor's PyObject (torch's THPVariable) holds its at::Tensor: right after the object
// header of a CPython build without free threading or Py_TRACE_REFS. BorrowedParams checks it
// in every parameter it is made from, and is not used where it does not hold.
constexpr size_t kPyObjectTensorOffset = 2 * sizeof(void*);

const c10::TensorImpl* tensor_held_by(const void* owner) {
  const c10::TensorImpl* impl = nullptr;
  std::memcpy(&impl, static_cast<const char*>(owner) + kPyObjectTensorOffset, sizeof impl);
  return impl;
}

// The object's type (CPython's ob_type, after its reference count): a parameter whose class is
// assigned anew (`p.__class__ = ...`, which keeps its tensor) is borrowed again, and its type checked.
const void* type_of(const void* owner) {
  const void* type = nullptr;
  std::memcpy(&type, static_cast<const char*>(owner) + sizeof(void*), sizeof type);
  return type;
}

}  // namespace

BorrowedParams::BorrowedParams(const std::vector<at::Tensor>& params) {
  owners_.reserve(params.size());
  borrowed_.reserve(params.size());
  for (const auto& p : params) {
    TORCH_CHECK(p.defined(), "BorrowedParams: an undefined tensor cannot be borrowed");
    // Alive here: the caller's list holds it.
    const void* owner = p.unsafeGetTensorImpl()->pyobj_slot()->load_pyobj();
    usable_ = usable_ && owner != nullptr && tensor_held_by(owner) == p.unsafeGetTensorImpl();
    owners_.push_back(owner);
    types_.push_back(owner != nullptr ? type_of(owner) : nullptr);
    borrowed_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(p));
  }
}

BorrowedParams::~BorrowedParams() {
  for (auto& t : borrowed_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
}

bool BorrowedParams::borrowed_from(size_t i, const void* owner) const {
  return usable_ && i < owners_.size() && owner == owners_[i] &&
         tensor_held_by(owner) == borrowed_[i].unsafeGetTensorImpl() && type_of(owner) == types_[i];
}

void register_tensor_pins() {
  static const auto pins = torch::class_<TensorPins>("holocron", "TensorPins")
                               .def(torch::init<std::vector<at::Tensor>>())
                               .def("__len__", [](const c10::intrusive_ptr<TensorPins>& self) {
                                 return static_cast<int64_t>(self->tensors.size());
                               });
  static const auto borrowed =
      torch::class_<BorrowedParams>("holocron", "BorrowedParams")
          .def(torch::init<std::vector<at::Tensor>>())
          .def("__len__", [](const c10::intrusive_ptr<BorrowedParams>& self) {
            return static_cast<int64_t>(self->size());
          })
          .def("usable", [](const c10::intrusive_ptr<BorrowedParams>& self) { return self->usable(); })
          // For holocron_params_are (src/python_walks.cpp), which the caller hands it to.
          .def("address", [](const c10::intrusive_ptr<BorrowedParams>& self) {
            return static_cast<int64_t>(reinterpret_cast<intptr_t>(self.get()));
          });
  (void)pins;
  (void)borrowed;
}

}  // namespace holocron::optim::ops
