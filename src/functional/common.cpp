#include "functional/common.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/COW.h>

#include <algorithm>
#include <atomic>
#include <pthread.h>
#include <exception>
#include <sstream>

namespace holocron::optim::functional::detail {

const char* why_not_writable(const at::Tensor& t) {
  if (t.is_inference() && !c10::InferenceMode::is_enabled()) {
    return "is an inference tensor, which can be updated in place only inside InferenceMode";
  }
  if (at::has_internal_overlap(t) == at::MemOverlap::Yes) {
    return "has elements that share memory (an expanded tensor, say), which cannot be updated in place";
  }
  return nullptr;
}

namespace {
// Set in a child forked from this process: GNU OpenMP cannot run a parallel region there once the
// parent has run one (the child hangs), so the host work stays on the calling thread in children,
// as it did before it ran in parallel (torch's DataLoader workers and Hogwild-style training fork).
std::atomic<bool> forked_child{false};
const bool at_fork_registered = [] {
  return pthread_atfork(nullptr, nullptr, [] { forked_child.store(true, std::memory_order_relaxed); }) == 0;
}();
}  // namespace

bool host_work_in_parallel(size_t n) {
  (void)at_fork_registered;
  // 8-bit codes and Kahan compensations are found through the calling thread's call
  // (BlockwiseState, CompensatedWeights): on a worker every check of codes would fail and run
  // again in order.
  return n >= static_cast<size_t>(kMinParallelTensors) && at::get_num_threads() > 1 && !at::in_parallel_region() &&
         !forked_child.load(std::memory_order_relaxed) && !BlockwiseState::active() && !CompensatedWeights::active();
}

namespace {

void check_fits(const char* optimizer, const char* what, size_t index, const at::Tensor& t,
                const at::Tensor& param, bool is_state = false) {
  TORCH_CHECK(t.defined(), optimizer, ": ", what, "[", index, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, optimizer, " does not support sparse ", what,
              " (", what, "[", index, "] has layout ", t.layout(), ")");
  TORCH_CHECK(same_extents(t.sizes(), param.sizes()), optimizer, ": ", what, "[", index,
              "] has shape ", t.sizes(), " but its parameter has shape ", param.sizes());
  // State may also be float32 or bfloat16 (lean or mixed-precision state), whatever the
  // parameter's dtype, or 8-bit codes where its algorithm takes them (BlockwiseState); the math
  // runs in the parameter's math type.
  const bool lean = is_state && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 ||
                                 (t.scalar_type() == at::kByte && BlockwiseState::of(t).has_value()));
  TORCH_CHECK(t.scalar_type() == param.scalar_type() || lean, optimizer, ": ", what, "[", index,
              "] has dtype ", t.scalar_type(), " but its parameter has dtype ", param.scalar_type(),
              is_state ? " (state may also be float32 or bfloat16, or uint8 codes with their scales in "
                         "state_absmax where the algorithm keeps 8-bit moments)"
                       : "");
  TORCH_CHECK(t.device() == param.device(), optimizer, ": ", what, "[", index,
              "] is on ", t.device(), " but its parameter is on ", param.device());
  if (is_state) {
    const char* unwritable = why_not_writable(t);
    TORCH_CHECK(unwritable == nullptr, optimizer, ": ", what, "[", index, "] ", unwritable);
  }
}

}  // namespace

void check_group(const char* optimizer, TensorList params, TensorList grads,
                 std::initializer_list<NamedList> state_lists, bool params_written) {
  TORCH_CHECK(grads.size() == params.size(), optimizer, ": got ", grads.size(),
              " gradients for ", params.size(), " parameters");
  for (const auto& list : state_lists) {
    TORCH_CHECK(list.tensors.size() == params.size(), optimizer, ": got ",
                list.tensors.size(), " ", list.name, " for ", params.size(), " parameters");
  }
  // Read here: the checks may run on other threads.
  const bool state_as_param = StateAsParam::active();
  check_each(params.size(), [&](size_t i) {
    prefetch_metadata(params, i);
    prefetch_metadata(grads, i);
    for (const auto& list : state_lists) prefetch_metadata(list.tensors, i);
    const auto& p = params[i];
    TORCH_CHECK(p.defined(), optimizer, ": params[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, optimizer, " does not support sparse parameters");
    TORCH_CHECK(at::isFloatingType(p.scalar_type()), optimizer, ": params[", i,
                "] has dtype ", p.scalar_type(), "; only floating-point parameters can be optimized");
    if (params_written) {
      const char* unwritable = why_not_writable(p);
      TORCH_CHECK(unwritable == nullptr, optimizer, ": params[", i, "] ", unwritable);
    }
    check_fits(optimizer, "gradients", i, grads[i], p);
    for (const auto& list : state_lists) {
      const auto& t = list.tensors[i];
      // validate_group's refusal, in its words: what the Python step would have raised.
      TORCH_CHECK(!state_as_param || !t.defined() || t.scalar_type() == p.scalar_type(), optimizer, ": state[", i,
                  "] has dtype ", t.scalar_type(), " but its group's state_precision ('param') keeps the parameter's ",
                  p.scalar_type());
      check_fits(optimizer, list.name, i, t, p, true);
    }
  });
}

namespace {
thread_local bool state_as_param_now = false;
}  // namespace

StateAsParam::StateAsParam(bool on) : previous_(state_as_param_now) { state_as_param_now = on; }
StateAsParam::~StateAsParam() { state_as_param_now = previous_; }
bool StateAsParam::active() { return state_as_param_now; }

void check_flat_state(const char* optimizer, TensorList params, TensorList buffers,
                      c10::ArrayRef<int64_t> owners, std::optional<at::ScalarType> state_dtype) {
  TORCH_CHECK(owners.size() == buffers.size(), optimizer, ": got ", owners.size(), " owners for ",
              buffers.size(), " state buffers");
  check_each(buffers.size(), [&](size_t i) {
    const int64_t owner = owners[i];
    TORCH_CHECK(owner >= 0 && owner < static_cast<int64_t>(params.size()), optimizer,
                ": state buffer ", i, " belongs to parameter ", owner, " of ", params.size());
    const auto& p = params[owner];
    const auto expected = state_dtype.value_or(p.scalar_type());
    if (buffers[i].defined()) {
      TORCH_CHECK(buffers[i].scalar_type() == expected, optimizer, ": state[", owner, "] has dtype ",
                  buffers[i].scalar_type(), " but its group's state_precision ",
                  state_dtype ? "keeps " : "('param') keeps the parameter's ", expected);
    }
    check_fits(optimizer, "state", static_cast<size_t>(owner), buffers[i], p, true);
  });
}

namespace {
thread_local const CompensatedWeights* compensated_weights = nullptr;
}  // namespace

CompensatedWeights::CompensatedWeights(const char* optimizer, TensorList params, TensorList compensation)
    : params_(params), compensation_(compensation), outer_(compensated_weights) {
  if (!compensation_.empty()) {
    TORCH_CHECK(compensation_.size() == params.size(), optimizer, ": got ", compensation_.size(),
                " Kahan compensations for ", params.size(), " parameters");
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& c = compensation_[i];
      if (!c.defined()) continue;
      const auto& p = params[i];
      TORCH_CHECK(at::isReducedFloatingType(p.scalar_type()), optimizer, ": a Kahan compensation is for ",
                  "bfloat16 and float16 weights; parameter ", i, " has dtype ", p.scalar_type());
      TORCH_CHECK(c.scalar_type() == p.scalar_type() && c.sizes().equals(p.sizes()) && c.device() == p.device(),
                  optimizer, ": the Kahan compensation of parameter ", i, " (", c.scalar_type(), " ", c.sizes(),
                  " on ", c.device(), ") does not fit its parameter (", p.scalar_type(), " ", p.sizes(), " on ",
                  p.device(), ")");
    }
  }
  // Set even without compensations: a call inside another does not see the outer call's.
  compensated_weights = this;
}

CompensatedWeights::~CompensatedWeights() {
  compensated_weights = outer_;
  if (std::uncaught_exceptions() == 0) mark_written({compensation_});
}

bool CompensatedWeights::active() {
  return compensated_weights != nullptr && !compensated_weights->compensation_.empty();
}

at::Tensor CompensatedWeights::of(const at::Tensor& param) {
  const auto* self = compensated_weights;
  if (self == nullptr || self->compensation_.empty()) return {};
  const size_t n = self->params_.size();
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (self->cursor_ + k) % n;
    if (self->params_[i].is_same(param)) {
      self->cursor_ = i + 1;
      return self->compensation_[i];
    }
  }
  return {};
}

namespace {
thread_local const BlockwiseState* blockwise_state = nullptr;
}  // namespace

BlockwiseState::BlockwiseState(const char* optimizer, std::initializer_list<BlockwiseList> lists,
                               const GradScaling& scaling)
    : absmax_(scaling.state_absmax), outer_(blockwise_state) {
  size_t next = 0;
  for (const auto& list : lists) {
    for (size_t i = 0; i < list.tensors.size(); ++i) {
      const auto& codes = list.tensors[i];
      if (!codes.defined() || codes.scalar_type() != at::kByte) continue;
      TORCH_CHECK(next < absmax_.size(), optimizer, ": ", list.name, "[", i, "] holds 8-bit codes (uint8) but ",
                  "state_absmax has ", absmax_.size(), " scale tensors, one per uint8 state tensor in order");
      const auto& absmax = absmax_[next++];
      const int64_t blocks = (codes.numel() + kQuantizationBlock - 1) / kQuantizationBlock;
      TORCH_CHECK(codes.layout() == at::kStrided && codes.is_contiguous(), optimizer, ": the 8-bit codes ", list.name,
                  "[", i, "] must be contiguous (blocks run in row-major order)");
      TORCH_CHECK(absmax.defined() && absmax.scalar_type() == at::kFloat && absmax.dim() == 1 &&
                      absmax.numel() == blocks && absmax.is_contiguous() && absmax.device() == codes.device(),
                  optimizer, ": the scales of ", list.name, "[", i, "] (state_absmax[", next - 1, "]: ",
                  absmax.defined() ? c10::toString(absmax.scalar_type()) : "undefined", " ",
                  absmax.defined() ? absmax.sizes() : at::IntArrayRef{}, ") must be a contiguous float32 tensor of ",
                  blocks, " elements (one per block of ", kQuantizationBlock, ") on ", codes.device());
      entries_.push_back({codes.unsafeGetTensorImpl(), {absmax, list.is_signed}});
    }
  }
  TORCH_CHECK(next == absmax_.size(), optimizer, ": got ", absmax_.size(), " state_absmax tensors for ", next,
              " uint8 state tensors");
  std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.codes < b.codes; });
  for (size_t k = 1; k < entries_.size(); ++k) {
    TORCH_CHECK(entries_[k].codes != entries_[k - 1].codes, optimizer, ": one uint8 state tensor is passed twice");
  }
  // Set even without codes: a call inside another does not see the outer call's.
  blockwise_state = this;
}

BlockwiseState::~BlockwiseState() {
  blockwise_state = outer_;
  if (std::uncaught_exceptions() == 0) mark_written({absmax_});
}

bool BlockwiseState::active() { return blockwise_state != nullptr && !blockwise_state->entries_.empty(); }

std::optional<BlockwiseState::Codes> BlockwiseState::of(const at::Tensor& codes) {
  const auto* self = blockwise_state;
  if (self == nullptr || self->entries_.empty()) return std::nullopt;
  const auto* impl = codes.unsafeGetTensorImpl();
  const auto it = std::lower_bound(self->entries_.begin(), self->entries_.end(), impl,
                                   [](const Entry& e, const c10::TensorImpl* key) { return e.codes < key; });
  if (it == self->entries_.end() || it->codes != impl) return std::nullopt;
  return it->scales;
}

FusedScratch& fused_scratch() {
  thread_local FusedScratch scratch;
  return scratch;
}

bool fused_group_lists(kernels::cpu::Group& group, TensorList params, c10::ArrayRef<TensorList> lists,
                       size_t narrow, unsigned state) {
  namespace cpu = kernels::cpu;
  if (!cpu::fused_enabled()) return false;
  // Where ATen's in-place checks would refuse the update (a parameter that
  // requires grad under grad mode, an inference tensor outside inference
  // mode), the reference path runs them. The classes step under NoGradGuard.
  // The calling thread's modes, read here: the loop below may run on other threads.
  const bool inference_mode = c10::InferenceMode::is_enabled();
  const bool refuses_requires_grad = at::GradMode::is_enabled() && !inference_mode;
  TORCH_INTERNAL_ASSERT(lists.size() <= cpu::kMaxArrays && narrow <= lists.size());
  const size_t n = params.size();
  group.tensors.assign(n, {});
  auto& addresses = fused_scratch().addresses;
  addresses.assign(n, nullptr);
  // Fills tensor i's slot; false where the kernels cannot take it.
  auto fill = [&](size_t i) {
    prefetch_metadata(params, i);
    for (const auto& list : lists) prefetch_metadata(list, i);
    const auto& p = params[i];
    if (refuses_requires_grad && p.requires_grad()) return false;
    const auto dtype = p.scalar_type();
    if (!p.device().is_cpu() || !cpu::supports_dtype(dtype) || !p.is_non_overlapping_and_dense()) {
      return false;
    }
    if (p.is_inference() && !inference_mode) return false;
    const auto wide_dtype = at::isReducedFloatingType(dtype) ? at::kFloat : dtype;
    auto& slot = group.tensors[i];
    slot.dtype = dtype;
    slot.numel = p.numel();
    // The first state tensor given sets the state dtype (the kernels take one per tensor), but
    // any 8-bit codes make it Byte: their float32 neighbours are then the 8-bit build's plain arrays.
    auto state_dtype = at::ScalarType::Undefined;
    for (size_t k = 0; k < lists.size() && k < narrow; ++k) {
      if (((state >> k) & 1u) && !lists[k].empty()) {
        const auto dtype_k = lists[k][i].scalar_type();
        if (state_dtype == at::ScalarType::Undefined || dtype_k == at::kByte) state_dtype = dtype_k;
      }
    }
    if (state_dtype != at::ScalarType::Undefined && cpu::state_slot(dtype, state_dtype) < 0) return false;
    slot.state_dtype = state_dtype;
    size_t j = 0;
    auto take = [&](TensorList list, at::ScalarType expected) {
      if (list.empty()) return true;
      const auto& t = list[i];
      if (expected == at::kByte && t.scalar_type() == at::kByte) {
        // Codes walk their blocks in memory order: the parameter's must be row-major too.
        const auto blockwise = BlockwiseState::of(t);
        if (!blockwise || !p.is_contiguous() || !blockwise->absmax.device().is_cpu()) return false;
        slot.blockwise[j] = {&blockwise_map(blockwise->is_signed), blockwise->absmax.data_ptr<float>()};
      } else if (expected == at::kByte) {
        expected = at::kFloat;  // the 8-bit build's arrays without codes
      }
      if (!t.device().is_cpu() || t.scalar_type() != expected || !same_extents(t.sizes(), p.sizes()) ||
          !same_extents(t.strides(), p.strides())) {
        return false;
      }
      slot.data[j] = t.data_ptr();
      return true;
    };
    for (const auto& list : lists) {
      const bool is_state = (state >> j) & 1u;
      if (!take(list, is_state ? state_dtype : j < narrow ? dtype : wide_dtype)) return false;
      ++j;
    }
    if (const auto compensation = CompensatedWeights::of(p); compensation.defined()) {
      if (!compensation.device().is_cpu() || !same_extents(compensation.strides(), p.strides())) return false;
      slot.compensation = compensation.data_ptr();
    }
    if (slot.numel > 0) addresses[i] = p.data_ptr();
    return true;
  };
  // A copy-on-write storage is materialized by data_ptr(), which ATen forbids inside
  // parallel_for: a group holding one is filled on the calling thread.
  auto shares_on_write = [&](size_t i) {
    if (params[i].has_storage() && c10::impl::cow::is_cow_data_ptr(params[i].storage().data_ptr())) return true;
    return std::any_of(lists.begin(), lists.end(), [&](TensorList list) {
      return !list.empty() && list[i].has_storage() && c10::impl::cow::is_cow_data_ptr(list[i].storage().data_ptr());
    });
  };
  enum Outcome : int { kFilled, kRefused, kOnCaller };
  std::atomic<int> outcome{host_work_in_parallel(n) ? kFilled : kOnCaller};
  if (outcome == kFilled) {
    // A refusal is final (fill reads no thread-local state); either outcome ends the loop.
    at::parallel_for(0, static_cast<int64_t>(n), kMinParallelTensors / 2, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end && outcome.load(std::memory_order_relaxed) == kFilled; ++i) {
        if (shares_on_write(static_cast<size_t>(i))) {
          outcome = kOnCaller;
        } else if (!fill(static_cast<size_t>(i))) {
          outcome = kRefused;
        }
      }
    });
  }
  if (outcome == kRefused) return false;
  if (outcome == kOnCaller) {
    for (size_t i = 0; i < n; ++i) {
      if (!fill(i)) return false;
    }
  }
  // A parameter listed twice would be two chunks of work on the same memory,
  // possibly on two threads at once: the reference path updates it twice, in
  // order, as torch's optimizers do.
  addresses.erase(std::remove(addresses.begin(), addresses.end(), nullptr), addresses.end());
  std::sort(addresses.begin(), addresses.end());
  return std::adjacent_find(addresses.begin(), addresses.end()) == addresses.end();
}

void mark_written(std::initializer_list<TensorList> lists) {
  for (const auto& list : lists) {
    for_tensor_ranges(list.size(), [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) {
        prefetch_metadata(list, i);
        const auto& t = list[i];
        if (t.defined() && !t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
      }
    });
  }
}

void check_steps(const char* optimizer, c10::ArrayRef<int64_t> steps, size_t expected) {
  TORCH_CHECK(steps.size() == expected, optimizer, ": got ", steps.size(), " steps for ",
              expected, " parameters");
  for (size_t i = 0; i < steps.size(); ++i) {
    TORCH_CHECK(steps[i] >= 1, optimizer, ": steps[", i, "] is ", steps[i],
                "; a step counter counts this step and starts at 1");
  }
}

void check_hyper(const char* optimizer, const char* name, double value, double low,
                 bool low_inclusive, double high, bool high_inclusive) {
  const bool above = low_inclusive ? value >= low : value > low;
  const bool below = high_inclusive ? value <= high : value < high;
  if (!(above && below && !std::isnan(value))) {
    std::ostringstream range;
    range << (low_inclusive ? "[" : "(") << low << ", " << high << (high_inclusive ? "]" : ")");
    TORCH_CHECK_VALUE(false, optimizer, ": invalid ", name, " value: ", value, " (expected in ",
                      range.str(), ")");
  }
}

namespace {
double scaling_value(const char* optimizer, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.numel() == 1 && (t.is_floating_point() || t.scalar_type() == at::kInt ||
                                        t.scalar_type() == at::kLong),
                    optimizer, ": ", name, " must be a one-element real tensor, got ", t.numel(),
                    " elements of dtype ", t.scalar_type());
  return t.item<double>();
}
}  // namespace

std::optional<double> grad_unscale(const char* optimizer, const GradScaling& scaling,
                                   std::optional<double> clip_eps) {
  double inverse = 1.0;
  if (scaling.grad_scale.defined()) {  // checked even when the step is skipped
    const double scale = scaling_value(optimizer, "grad_scale", scaling.grad_scale);
    TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0.0, optimizer,
                      ": grad_scale must be finite and > 0, got ", scale);
    inverse = static_cast<double>(static_cast<float>(1.0 / scale));
  }
  if (scaling.grad_norm.defined()) {
    TORCH_CHECK_VALUE(std::isfinite(scaling.max_grad_norm) && scaling.max_grad_norm > 0.0, optimizer,
                      ": max_grad_norm must be finite and > 0, got ", scaling.max_grad_norm);
    const double norm = scaling_value(optimizer, "grad_norm", scaling.grad_norm);
    TORCH_CHECK_VALUE(!(norm < 0.0), optimizer, ": grad_norm must be >= 0, got ", norm);
    // A NaN norm stays NaN, as in the peers' code.
    if (clip_eps) {
      const double factor = scaling.max_grad_norm / (norm + *clip_eps);
      if (!(factor >= 1.0)) inverse *= factor;
    } else {
      const double divisor = norm / scaling.max_grad_norm;
      if (!(divisor <= 1.0)) inverse /= divisor;
    }
  }
  if (scaling.found_inf.defined() && scaling_value(optimizer, "found_inf", scaling.found_inf) != 0.0) {
    return std::nullopt;
  }
  // Negation is exact: ascending reads the bits of descending on -g.
  return scaling.maximize ? -inverse : inverse;
}

std::vector<at::Tensor> unscaled_grads(TensorList grads, double inverse) {
  std::vector<at::Tensor> out(grads.begin(), grads.end());
  if (inverse != 1.0) {
    for (auto& g : out) g = g.mul(inverse);
  }
  return out;
}

void check_sharding(const char* optimizer, const Sharding& sharding, TensorList params) {
  if (!sharding.numels.empty()) {
    TORCH_CHECK(sharding.numels.size() == params.size(), optimizer, ": got ",
                sharding.numels.size(), " whole-tensor sizes for ", params.size(), " parameters");
    for (size_t i = 0; i < params.size(); ++i) {
      TORCH_CHECK(sharding.numels[i] >= params[i].numel(), optimizer, ": parameter ", i, " has ",
                  params[i].numel(), " elements, more than its whole tensor's ", sharding.numels[i]);
    }
  }
  if (sharding.channel_layouts.empty()) return;
  TORCH_CHECK(sharding.channel_layouts.size() == params.size(), optimizer, ": got ",
              sharding.channel_layouts.size(), " channel layouts for ", params.size(), " parameters");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& layout = sharding.channel_layouts[i];
    const int64_t numel = params[i].numel();
    const int64_t whole = whole_numel(sharding, params, i);
    TORCH_CHECK(layout.channels >= 0 && layout.first >= 0 && layout.width >= 1, optimizer, ": parameter ", i,
                "'s channel layout (channels=", layout.channels, ", first=", layout.first, ", width=",
                layout.width, ") needs channels >= 0, first >= 0 and width >= 1");
    if (layout.channels == 0) continue;
    // On every rank, its elements or none: the ranks must agree on the rows they all-reduce.
    TORCH_CHECK(whole % layout.channels == 0, optimizer, ": parameter ", i, "'s whole tensor of ", whole,
                " elements cannot have ", layout.channels, " output channels");
    if (numel == 0) continue;
    // The last local element lies in a channel: first + numel - 1 < channels * width (wide: the
    // values are the caller's).
    using Wide = __int128;
    const bool fits = Wide{layout.first} + numel <= Wide{layout.channels} * layout.width;
    TORCH_CHECK(fits, optimizer, ": parameter ", i, "'s ", numel, " local elements from first=", layout.first,
                " in rows of width=", layout.width, " go past its whole tensor's ", layout.channels,
                " output channels");
  }
}

void two_passes(const char* optimizer, const Sharding& sharding, int width, const PassCall& first,
                const PassCall& second, kernels::cpu::Sums& sums, kernels::cpu::TensorPhase phase) {
  namespace cpu = kernels::cpu;
  if (!sharding.all_reduce) {
    cpu::run_pair(first.pass, first.group, first.args, second.pass, second.group, second.args, sums, phase);
    return;
  }
  cpu::run(first.pass, first.group, first.args, &sums);
  all_reduce_sums(optimizer, sharding, sums, width);
  for (size_t t = 0; t < sums.size(); ++t) phase(static_cast<int64_t>(t), sums[t]);
  cpu::run(second.pass, second.group, second.args);
}

void all_reduce_sums(const char* optimizer, const Sharding& sharding, kernels::cpu::Sums& sums,
                     int width) {
  if (!sharding.all_reduce) return;
  const auto rows = static_cast<int64_t>(sums.size());
  auto packed = at::empty({rows, width}, at::TensorOptions().dtype(at::kDouble));
  auto* data = packed.data_ptr<double>();
  for (int64_t i = 0; i < rows; ++i) {
    for (int k = 0; k < width; ++k) data[i * width + k] = sums[i][k];
  }
  sharding.all_reduce(packed);
  TORCH_CHECK(packed.defined() && packed.sizes().equals({rows, int64_t{width}}), optimizer,
              ": the all-reduce of the partial sums must keep their shape [", rows, ", ", width,
              "]");
  const auto totals = packed.to(at::kCPU, at::kDouble).contiguous();
  const auto* total = totals.data_ptr<double>();
  for (int64_t i = 0; i < rows; ++i) {
    for (int k = 0; k < width; ++k) sums[i][k] = total[i * width + k];
  }
}

}  // namespace holocron::optim::functional::detail
