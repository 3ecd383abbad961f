#pragma once

// Shared checks and helpers of the functional layer.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "holocron/optim/functional.h"
#include "holocron/optim/quantization.h"
#include "kernels/cpu/pass.h"

namespace holocron::optim::functional::detail {

// Whether two size or stride lists are equal. IntArrayRef::equals calls memcmp, which on the
// one- or two-dimensional tensors of a step over thousands of small ones costs more than the
// comparison: the checks make four such calls per tensor and list.
inline bool same_extents(c10::IntArrayRef a, c10::IntArrayRef b) {
  if (a.size() != b.size()) return false;
  for (size_t d = 0; d < a.size(); ++d) {
    if (a[d] != b[d]) return false;
  }
  return true;
}

// A walk over many tensors' metadata (checks, gathering data pointers, version bumps) finds each
// TensorImpl, its storage and its autograd metadata cold after the last step's sweep of every
// buffer: one dependent miss after another, about 0.1 us each. Called with the walk's index i,
// this requests those of list[i + kMetadataAhead] and, once that TensorImpl has arrived, the
// storage and autograd metadata it points to (list[i + kMetadataAhead / 2]), so that the misses
// of a dozen tensors overlap. Only speed depends on it.
constexpr size_t kMetadataAhead = 16;

inline void prefetch_metadata(TensorList list, size_t i) {
  if (i + kMetadataAhead < list.size()) {
    const char* const impl = reinterpret_cast<const char*>(list[i + kMetadataAhead].unsafeGetTensorImpl());
    for (size_t offset = 0; offset < sizeof(c10::TensorImpl); offset += 64) __builtin_prefetch(impl + offset);
  }
  if (i + kMetadataAhead / 2 < list.size()) {
    const auto* impl = list[i + kMetadataAhead / 2].unsafeGetTensorImpl();
    __builtin_prefetch(impl->unsafe_storage().unsafeGetStorageImpl());  // null without one: a prefetch never faults
    if (const auto* meta = impl->autograd_meta()) __builtin_prefetch(meta);
  }
}

// objects[i + kMetadataAhead] requested from memory, for a walk (that may write them) over objects
// the last step's sweep left cold, such as the C++ classes' per-parameter states. A null pointer
// is a no-op: a prefetch never faults.
template <class T>
inline void prefetch_object(const std::vector<T*>& objects, size_t i) {
  if (i + kMetadataAhead < objects.size()) __builtin_prefetch(objects[i + kMetadataAhead], 1);
}

// prefetch_metadata, and the element of list[i + kMetadataAhead / 4] (a one-element tensor's
// value: TAdam's W_t, a trust ratio), once its storage has arrived: reading or writing thousands
// of them is three dependent misses each otherwise. Only speed depends on it.
inline void prefetch_values(TensorList list, size_t i) {
  prefetch_metadata(list, i);
  if (i + kMetadataAhead / 4 < list.size()) {
    const auto* impl = list[i + kMetadataAhead / 4].unsafeGetTensorImpl();
    auto* storage = impl->unsafe_storage().unsafeGetStorageImpl();
    if (storage == nullptr) return;
    // The address only, without the checks of data() (which may throw) or any materialization;
    // computed as an integer: an empty storage's data is null, and its offset need not be 0.
    const auto data = reinterpret_cast<uintptr_t>(storage->_mutable_data_ptr_no_checks().get());
    if (data == 0) return;
    const auto offset = static_cast<uintptr_t>(impl->storage_offset()) * impl->dtype().itemsize();
    __builtin_prefetch(reinterpret_cast<const void*>(data + offset), 1);
  }
}

// Drops the references `tensors` holds, in order, each TensorImpl requested kMetadataAhead drops
// ahead: a drop writes a reference count that the step's sweep left cold, and a list of thousands
// dropped one miss after another costs a step over small tensors a tenth of its time.
inline void release_tensors(std::vector<at::Tensor>& tensors) {
  const size_t n = tensors.size();
  for (size_t i = 0; i < n; ++i) {
    if (i + kMetadataAhead < n) __builtin_prefetch(tensors[i + kMetadataAhead].unsafeGetTensorImpl(), 1);
    tensors[i].reset();
  }
  tensors.clear();
}

// A std::vector of tensors that drops them through release_tensors when it goes.
class HeldTensors : public std::vector<at::Tensor> {
 public:
  HeldTensors() = default;
  explicit HeldTensors(size_t n) : std::vector<at::Tensor>(n) {}
  HeldTensors(std::vector<at::Tensor>&& tensors) : std::vector<at::Tensor>(std::move(tensors)) {}  // NOLINT
  HeldTensors(HeldTensors&&) = default;
  HeldTensors& operator=(HeldTensors&&) = default;
  HeldTensors(const HeldTensors&) = default;
  HeldTensors& operator=(const HeldTensors&) = default;
  ~HeldTensors() { release_tensors(*this); }
};

// `list` where the update reads it (amsgrad's maxima, ...), else empty.
inline TensorList if_used(bool used, TensorList list) { return used ? list : TensorList{}; }

struct NamedList {
  const char* name;
  TensorList tensors;
};

// Why `t` cannot be updated in place (an inference tensor outside InferenceMode, elements sharing
// memory), or null: checked before any write, where ATen would refuse it in the middle of an update.
const char* why_not_writable(const at::Tensor& t);

// Per-tensor host work on a group (checks, gathering data pointers, version bumps) is pointer
// chasing through TensorImpls that the last step's sweep of every buffer left cold; on the
// intra-op threads their cache misses overlap. Below this many tensors a parallel region costs
// more than it saves.
constexpr int64_t kMinParallelTensors = 512;

// Whether the host work on `n` tensors runs on the intra-op threads. That work must read no
// thread-local state of the calling thread (grad or inference mode, BlockwiseState,
// CompensatedWeights): the callers take it before.
bool host_work_in_parallel(size_t n);

// f(begin, end) over [0, n): on the intra-op threads where host_work_in_parallel(n).
template <class F>
void for_tensor_ranges(size_t n, const F& f) {
  if (host_work_in_parallel(n)) {
    at::parallel_for(0, static_cast<int64_t>(n), kMinParallelTensors / 2,
                     [&](int64_t begin, int64_t end) { f(static_cast<size_t>(begin), static_cast<size_t>(end)); });
  } else {
    f(0, n);
  }
}

// check(i) for every i in [0, n), throwing what the first failing i throws, as a loop in order
// would. On the intra-op threads a check may fail where the calling thread's would pass (it sees
// the worker's thread-local modes, never laxer ones): any failure runs the checks again in order
// on the calling thread, which throws the first error, or none.
template <class Check>
void check_each(size_t n, const Check& check) {
  if (!host_work_in_parallel(n)) {
    for (size_t i = 0; i < n; ++i) check(i);
    return;
  }
  std::atomic<bool> failed{false};
  at::parallel_for(0, static_cast<int64_t>(n), kMinParallelTensors / 2, [&](int64_t begin, int64_t end) {
    try {
      for (int64_t i = begin; i < end && !failed.load(std::memory_order_relaxed); ++i) check(static_cast<size_t>(i));
    } catch (...) {
      failed = true;
    }
  });
  if (failed) {
    for (size_t i = 0; i < n; ++i) check(i);
  }
}

// Checks that every list fits `params` (same length; each tensor same shape,
// dtype and device as its parameter, state and, where `params_written`, parameters writable) and
// that every gradient is dense. Called before any write so that a failing call changes nothing.
void check_group(const char* optimizer, TensorList params, TensorList grads,
                 std::initializer_list<NamedList> state_lists, bool params_written = true);

// While one is in scope on this thread, check_group refuses state of another dtype than its
// parameter's, as validate_group does for a group whose state_precision is 'param'; the ops take
// float32 and bfloat16 state of any parameter otherwise. A Python step whose buffers are those it
// pinned asks for it (the op's `state_as_param`, HOLOCRON_PINNED) instead of walking its
// parameters' dtypes: a model converted since (`.half()`) leaves them float32.
class StateAsParam {
 public:
  explicit StateAsParam(bool on);
  ~StateAsParam();
  StateAsParam(const StateAsParam&) = delete;
  StateAsParam& operator=(const StateAsParam&) = delete;
  static bool active();

 private:
  bool previous_;
};

// check_group for state held per parameter as a flat list: buffers[i]
// belongs to params[owners[i]], and has exactly the dtype its group's state_precision keeps:
// `state_dtype`, or without one its parameter's (the classes make their state so; the functional
// layer takes any state of float32 or bfloat16).
void check_flat_state(const char* optimizer, TensorList params, TensorList buffers,
                      c10::ArrayRef<int64_t> owners, std::optional<at::ScalarType> state_dtype = std::nullopt);

void check_steps(const char* optimizer, c10::ArrayRef<int64_t> steps, size_t expected);

// Sharding: one whole-tensor element count per parameter, none below its shard's.
void check_sharding(const char* optimizer, const Sharding& sharding, TensorList params);
// The elements of parameter i's whole tensor.
inline int64_t whole_numel(const Sharding& sharding, TensorList params, size_t i) {
  return sharding.numels.empty() ? params[i].numel() : sharding.numels[i];
}
// The first `width` sums of each tensor replaced by their totals over all shards (nothing when
// the tensors are whole).
void all_reduce_sums(const char* optimizer, const Sharding& sharding, kernels::cpu::Sums& sums,
                     int width);

// One pass of a two-pass fused kernel: which, over which arrays, with what.
struct PassCall {
  kernels::cpu::Pass pass;
  const kernels::cpu::Group& group;
  const kernels::cpu::PassArgs& args;
};
// `first` (a reducing pass whose first `width` sums the sharding all-reduces), then `phase` for
// each tensor (kernels::cpu::TensorPhase: its coefficients for `second` from its sums), then
// `second`. Whole tensors take the pair in one sweep (kernels::cpu::run_pair); sharded ones take
// the passes in turn around the all-reduce, so a throwing collective leaves written only what
// `first` writes.
void two_passes(const char* optimizer, const Sharding& sharding, int width, const PassCall& first,
                const PassCall& second, kernels::cpu::Sums& sums, kernels::cpu::TensorPhase phase);

// Loss scaling (GradScaling), checked with the rest, before anything is
// written: what the kernels multiply gradients by (GradScaler's own float32
// reciprocal of the scale, so that both unscaling paths give the same bits;
// 1 without a scale), or nothing when `found_inf` says to skip the step.
// Clipping divides by max(1, norm / max_grad_norm) (timm's and apex's LAMB), or,
// given `clip_eps`, multiplies by min(max_grad_norm / (norm + clip_eps), 1)
// (Adan's authors).
std::optional<double> grad_unscale(const char* optimizer, const GradScaling& scaling,
                                   std::optional<double> clip_eps = std::nullopt);
// The reference backend's gradients: `grads * inverse` as new tensors, or
// the gradients themselves when there is nothing to unscale.
std::vector<at::Tensor> unscaled_grads(TensorList grads, double inverse);

void check_hyper(const char* optimizer, const char* name, double value, double low,
                 bool low_inclusive, double high, bool high_inclusive);

// The fused CPU kernels' view of a group (tensor i of list j as array j),
// filled into `group`; false when they cannot take it: a tensor not on the
// CPU, a dtype they lack, a parameter that is not dense, or state whose
// strides differ from its parameter's. The first `narrow` lists have the
// parameters' dtype, the others (Scout's statistics) their math type. An
// empty list leaves its array absent.
// Lists whose bit is set in `state` are state, which may also be float32 or bfloat16 (the same for
// all of one tensor's state: lean or mixed-precision state, TensorSlot::state_dtype).
bool fused_group_lists(kernels::cpu::Group& group, TensorList params, c10::ArrayRef<TensorList> lists,
                       size_t narrow, unsigned state = 0);

// A pass's state arrays (protocol::StateArrays): an algorithm's all but `param` and `grad`.
template <template <typename> class Arrays>
constexpr unsigned state_lists() {
  return kernels::cpu::protocol::StateArrays<Arrays>::value;
}

// The same for a pass's arrays, by name (kernels/cpu/protocol.h), e.g.
// `fused_group(group, params, adabelief::Arrays<TensorList>{.param = params, ...})`.
template <template <typename> class Arrays>
bool fused_group(kernels::cpu::Group& group, TensorList params, const Arrays<TensorList>& arrays,
                 size_t narrow = kernels::cpu::protocol::array_count<Arrays>()) {
  const auto lists = kernels::cpu::protocol::in_slot_order(arrays);
  return fused_group_lists(group, params, lists, narrow, state_lists<Arrays>());
}

// What a fused call builds besides the tensors (per-tensor views,
// coefficients, sums), kept per thread and reused, so that a step allocates
// nothing once its first step has run.
struct FusedScratch {
  kernels::cpu::Group group;
  kernels::cpu::Group second_group;
  kernels::cpu::PassArgs args;
  kernels::cpu::Sums sums;
  std::vector<void*> addresses;
  // `args` cleared for a group of n tensors.
  kernels::cpu::PassArgs& fresh_args(size_t n) {
    args.constants = {};
    args.per_tensor.assign(n, {});
    args.inv_grad_scale = 1.0;
    return args;
  }
};
FusedScratch& fused_scratch();

// The fused kernels write through raw pointers: bump the version counters as
// an in-place ATen op would, so autograd still sees the change.
void mark_written(std::initializer_list<TensorList> lists);

inline void check_non_negative(const char* optimizer, const char* name, double value) {
  check_hyper(optimizer, name, value, 0.0, true, INFINITY, false);
}

inline void check_beta(const char* optimizer, const char* name, double value) {
  check_hyper(optimizer, name, value, 0.0, true, 1.0, false);
}

// Kahan-compensated weights (GradScaling::compensation) of the functional call in progress on
// this thread, while this object lives: checked when made (one per parameter or none; each defined
// one of its bfloat16 or half parameter's shape, dtype and device), then seen by fused_group
// (TensorSlot::compensation) and ComputeScope (the reference backend), where the weight is read
// as p + c and stored as p = the weight rounded, c = what the rounding dropped. Each algorithm's
// function makes one after its checks, so that neither backend's math names it.
class CompensatedWeights {
 public:
  CompensatedWeights(const char* optimizer, TensorList params, const GradScaling& scaling)
      : CompensatedWeights(optimizer, params, TensorList(scaling.compensation)) {}
  CompensatedWeights(const char* optimizer, TensorList params, TensorList compensation);
  CompensatedWeights(const CompensatedWeights&) = delete;
  CompensatedWeights& operator=(const CompensatedWeights&) = delete;
  // Bumps the compensations' version counters (the fused kernels write through raw pointers).
  ~CompensatedWeights();

  // The compensation of `param` in the call in progress: undefined for none.
  static at::Tensor of(const at::Tensor& param);
  // Whether the calling thread is inside a call that holds compensations.
  static bool active();

 private:
  TensorList params_;
  TensorList compensation_;
  const CompensatedWeights* outer_;
  mutable size_t cursor_ = 0;  // where the last lookup matched: lookups go in parameter order
};

// 8-bit block-wise state (GradScaling::state_absmax) of the functional call in progress on this
// thread, while this object lives. Each algorithm's function makes one before its checks, naming
// the state lists that may hold codes and the map each takes (signed for first moments and
// momentum, unsigned for second moments and their maxima); the checks then take uint8 tensors
// in those lists only, and both backends see the codes' scales: fused_group_lists
// (TensorSlot::blockwise) and ComputeScope (decoded into the math type, encoded on commit).
struct BlockwiseList {
  const char* name;
  TensorList tensors;
  bool is_signed;
};
class BlockwiseState {
 public:
  // Pairs each uint8 tensor of `lists` (in order) with the next of `scaling.state_absmax`, and
  // checks them: as many scales as codes; codes contiguous; scales float32, contiguous, one per
  // block, on the codes' device.
  BlockwiseState(const char* optimizer, std::initializer_list<BlockwiseList> lists, const GradScaling& scaling);
  BlockwiseState(const BlockwiseState&) = delete;
  BlockwiseState& operator=(const BlockwiseState&) = delete;
  // Bumps the scales' version counters (the fused kernels write through raw pointers).
  ~BlockwiseState();

  struct Codes {
    at::Tensor absmax;
    bool is_signed = false;
  };
  // The scales and map of `codes` in the call in progress, or nothing where it holds no codes.
  static std::optional<Codes> of(const at::Tensor& codes);
  // Whether the calling thread is inside a call that holds 8-bit codes.
  static bool active();

 private:
  struct Entry {
    const c10::TensorImpl* codes;
    Codes scales;
  };
  std::vector<Entry> entries_;  // sorted by codes
  TensorList absmax_;
  const BlockwiseState* outer_;
};

// The two dynamic maps as the fused kernels read them (functional/quantization.cpp).
const kernels::cpu::QuantizationMap& blockwise_map(bool is_signed);

// Tensors are updated in the parameter's math type: half and bfloat16 ones through float32
// stand-ins written back, so the math never runs in 8 mantissa bits, and so is state of another
// dtype than its parameter's (lean or mixed-precision state: rounded when written back).
class ComputeScope {
 public:
  // `reference`: the parameter (its dtype sets the math type; with Kahan compensation,
  // CompensatedWeights, it is read as p + c and committed as the rounded weight and its residue).
  explicit ComputeScope(const at::Tensor& reference)
      : math_(at::isReducedFloatingType(reference.scalar_type()) ? at::kFloat : reference.scalar_type()),
        weights_(reference),
        compensation_(CompensatedWeights::of(reference)) {}
  ComputeScope(const ComputeScope&) = delete;
  ComputeScope& operator=(const ComputeScope&) = delete;

  // A tensor the update writes: its stand-in is copied back by commit().
  at::Tensor inout(const at::Tensor& t) {
    if (t.scalar_type() == math_) return t;
    auto wide = in(t);
    written_.emplace_back(t, wide);
    return wide;
  }
  // A tensor the update only reads.
  at::Tensor in(const at::Tensor& t) const {
    if (compensation_.defined() && t.is_same(weights_)) return t.to(math_).add_(compensation_.to(math_));
    if (t.scalar_type() == at::kByte) {
      const auto blockwise = BlockwiseState::of(t);
      TORCH_INTERNAL_ASSERT(blockwise, "uint8 state without scales passed the checks");
      return dequantize_blockwise(t, blockwise->absmax, blockwise->is_signed, math_);
    }
    return t.to(math_);
  }

  void commit() {
    for (auto& [narrow, wide] : written_) {
      if (narrow.scalar_type() == at::kByte) {
        const auto blockwise = BlockwiseState::of(narrow);
        auto encoded = quantize_blockwise(wide, blockwise->is_signed);
        narrow.copy_(encoded.codes);
        blockwise->absmax.copy_(encoded.absmax);
        continue;
      }
      narrow.copy_(wide);
      if (compensation_.defined() && narrow.is_same(weights_)) compensation_.copy_(wide.sub_(narrow.to(math_)));
    }
    written_.clear();
  }

 private:
  at::ScalarType math_;
  at::Tensor weights_;
  at::Tensor compensation_;
  std::vector<std::pair<at::Tensor, at::Tensor>> written_;
};

// Weight decay coupled (an L2 term in the gradient, the reference's) or decoupled (torch's
// decoupled_weight_decay, timm's decoupled_decay: p *= 1 - lr * wd before the update, nothing in
// the gradient). A factor of 1 is skipped by every path, which keeps the coupled bits.
struct WeightDecay {
  double coupled;  // of g + coupled * p
  double factor;   // p *= factor before the update
};
inline WeightDecay split_weight_decay(double weight_decay, double lr, bool decoupled) {
  return decoupled ? WeightDecay{0.0, 1.0 - lr * weight_decay} : WeightDecay{weight_decay, 1.0};
}

// `g + wd * p` as a new tensor (never written into the caller's gradient).
inline at::Tensor decayed_grad(const at::Tensor& grad, const at::Tensor& param, double wd) {
  return wd != 0.0 ? grad.add(param, wd) : grad;
}

// Whole-tensor sums, in double as the fused kernels take them (products of
// float32 values are then exact: AdamP's cosine of a one-element tensor is
// exactly +-1, on the edge of its threshold), and as shards sum to the whole
// tensor's.
inline double dot_of(const at::Tensor& a, const at::Tensor& b) {
  return a.to(at::kDouble).mul(b.to(at::kDouble)).sum().item<double>();
}
inline double squared_norm_of(const at::Tensor& t) { return dot_of(t, t); }

// Host decisions shared by both backends.

// The trust ratio shared by LARS, LAMB and RaLars: phi / update_norm, or 1
// when either is zero.
inline double trust_ratio(double phi, double update_norm) {
  return (phi == 0.0 || update_norm == 0.0) ? 1.0 : phi / update_norm;
}

inline double clamp_norm(double norm, const ScaleClip& clip) {
  return std::min(std::max(norm, clip.first), clip.second);
}

// TAdam's Student-t weight of this gradient from its Mahalanobis distance.
inline double tadam_weight(const std::optional<double>& dof, int64_t numel, double mahalanobis) {
  const auto d = static_cast<double>(numel);
  const double nu = dof.value_or(d);
  return (nu + d) / (nu + mahalanobis);
}

// RaLars' rectification factor, or nothing where the approximated SMA length
// is too short (<= 4) for the rectified step to be defined.
inline std::optional<double> ralars_rectification(double sma_inf, double step, double bc2) {
  const double sma_t = sma_inf - 2.0 * step * (1.0 - bc2) / bc2;
  if (!(sma_t > 4.0)) return std::nullopt;
  return std::sqrt((sma_t - 4.0) * (sma_t - 2.0) * sma_inf /
                   ((sma_inf - 4.0) * (sma_inf - 2.0) * sma_t));
}

// AdamP projects when cos(p, g) < delta / sqrt(numel).
inline double adamp_threshold(double delta, int64_t numel) {
  return delta / std::sqrt(static_cast<double>(numel));
}

}  // namespace holocron::optim::functional::detail

namespace holocron::optim::functional::detail {

// Checks shared by the Adam-like algorithms (lr, betas, eps, weight decay).
inline void check_adam_like(const char* name, double lr, std::initializer_list<double> betas,
                            double eps, double weight_decay) {
  check_non_negative(name, "lr", lr);
  static const char* const beta_names[] = {"betas[0]", "betas[1]", "betas[2]"};
  size_t index = 0;
  for (double beta : betas) check_beta(name, beta_names[index++], beta);
  check_non_negative(name, "eps", eps);
  check_non_negative(name, "weight_decay", weight_decay);
}

// sqrt(second_moment) / sqrt(bias_correction) + eps, as a new tensor.
inline at::Tensor denominator_of(const at::Tensor& second_moment, double bias_correction,
                                 double eps) {
  return second_moment.sqrt().div_(std::sqrt(bias_correction)).add_(eps);
}

// denominator_of(v or its running max). With amsgrad, parameter i's running max (in `running_maxes`) is advanced first.
inline at::Tensor adam_denominator(ComputeScope& scope, const at::Tensor& second_moment,
                                   bool amsgrad, TensorList running_maxes, size_t i,
                                   double bias_correction, double eps) {
  at::Tensor source = second_moment;
  if (amsgrad) {
    source = scope.inout(running_maxes[i]);
    at::maximum_out(source, source, second_moment);
  }
  return denominator_of(source, bias_correction, eps);
}

// `value` as the nearest number representable in `dtype`.
inline double round_to_dtype(double value, at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return static_cast<double>(static_cast<float>(value));
    case at::kHalf: return static_cast<double>(static_cast<float>(c10::Half(static_cast<float>(value))));
    case at::kBFloat16:
      return static_cast<double>(static_cast<float>(c10::BFloat16(static_cast<float>(value))));
    default: return value;
  }
}

// TAdam's moment weight after this step. The reference keeps W_t in the
// parameter's dtype; so do we, so that both fronts follow the same values.
inline double next_moment_weight(double W, double beta1, double w, at::ScalarType dtype) {
  return round_to_dtype(W * (2.0 * beta1 - 1.0) / beta1 + w, dtype);
}

// 1 - beta^step. Parameters stepped together share a counter, and an update asks each of them for
// the same two or three corrections: std::pow at 20-40 ns a call cost a step over 3000 tensors
// 0.1-0.2 ms, so the last few are remembered (per thread: the checks and coefficients may be
// computed on the intra-op threads), keyed by the bits of beta.
inline double bias_correction(double beta, int64_t step) {
  struct Remembered {
    bool held = false;
    std::uint64_t beta_bits = 0;
    int64_t step = 0;
    double value = 0.0;
  };
  constexpr unsigned kRemembered = 4;
  struct Memory {
    Remembered last[kRemembered];
    unsigned next = 0;
  };
  thread_local Memory memory;
  std::uint64_t bits = 0;
  std::memcpy(&bits, &beta, sizeof bits);
  for (const auto& r : memory.last) {
    if (r.held && r.step == step && r.beta_bits == bits) return r.value;
  }
  const double value = 1.0 - std::pow(beta, static_cast<double>(step));
  memory.last[memory.next++ % kRemembered] = {true, bits, step, value};
  return value;
}

// 1 / sqrt(bias_correction): the kernels multiply by it.
inline double inverse_sqrt_bias_correction(double beta, int64_t step) {
  return 1.0 / std::sqrt(bias_correction(beta, step));
}

}  // namespace holocron::optim::functional::detail
