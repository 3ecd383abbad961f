#pragma once

// The fused CPU kernels as seen from the functional layer: a group of tensors
// is handed over as raw pointers, and each algorithm is one or two passes over
// it (a reducing pass that returns per-tensor sums, then an update pass that
// reads per-tensor coefficients computed on the host in double). What each
// pass takes is named in protocol.h.
//
// This header is compiled once; the passes themselves are compiled once per
// instruction set (src/kernels/cpu/*.cpp with CPU_CAPABILITY set) and chosen
// at run time by `run`.

#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/FunctionRef.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/blockwise.h"
#include "kernels/cpu/protocol.h"

namespace holocron::optim::kernels::cpu {

// Elements per unit of work. A multiple of every vector width and of the
// reduction lane count, so chunk boundaries (hence the order of every sum)
// depend on neither the thread count nor the instruction set.
constexpr int64_t kChunk = int64_t{1} << 14;
// Fixed number of partial sums per reduction (element i of a tensor goes to
// lane i % kLanes), summed in order at the end of each chunk.
constexpr int kLanes = 16;
static_assert(kChunk % kBlock == 0 && kBlock % kLanes == 0, "8-bit blocks lie inside chunks, on the lane cycle");

constexpr int kMaxArrays = 8;
constexpr int kMaxSums = 4;
constexpr int kMaxCoefficients = 8;

struct TensorSlot {
  at::ScalarType dtype = at::kFloat;
  // The dtype of its state arrays (a pass's kState): the parameter's, or float32 or bfloat16
  // (lean or mixed-precision state); Undefined is the parameter's. The math runs in the
  // parameter's math type either way. Byte (8-bit state): each state array is either 8-bit
  // block-wise codes (`blockwise[j]` set) or float32.
  at::ScalarType state_dtype = at::ScalarType::Undefined;
  int64_t numel = 0;
  // In the order the pass names them. "Narrow" arrays have the tensor's
  // dtype; the "wide" ones after them (Scout's statistics) have its math type
  // (float for half/bfloat16).
  std::array<void*, kMaxArrays> data{};
  // Kahan-compensated weights (bfloat16 and half parameters only; the parameter's dtype, laid out
  // as it): the weight is parameter + compensation. Passes read that sum as the parameter, and
  // one that writes the parameter stores it rounded, and what the rounding dropped here.
  void* compensation = nullptr;
  // 8-bit state (state_dtype Byte): for each state array kept as codes, its map and its blocks'
  // scales (one float per kBlock elements); a state array without them is float32.
  struct Blockwise {
    const QuantizationMap* map = nullptr;
    float* absmax = nullptr;
  };
  std::array<Blockwise, kMaxArrays> blockwise{};
};

// The tensors of one parameter group. They may differ in dtype: `run` then
// runs the pass once per dtype.
struct Group {
  std::vector<TensorSlot> tensors;
};

// One block of a pass's typed Constants or PerTensor (protocol.h), carried
// through the type-erased driver as bytes, with the address of a tag of its
// type: a pass reading another type than the host wrote fails an assertion.
class Coefficients {
 public:
  template <typename C>
  void set(const C& value) {
    check<C>();
    std::memcpy(bytes_.data(), &value, sizeof(C));
    tag_ = &kTag<C>;
  }
  template <typename C>
  C10_ALWAYS_INLINE C get() const {
    check<C>();
    TORCH_INTERNAL_ASSERT(tag_ == &kTag<C>, "fused pass: coefficients read as another type than written");
    C value;
    std::memcpy(&value, bytes_.data(), sizeof(C));
    return value;
  }

 private:
  template <typename C>
  static constexpr void check() {
    static_assert(std::is_trivially_copyable_v<C> && std::is_default_constructible_v<C>);
    static_assert(sizeof(C) <= kMaxCoefficients * sizeof(double), "raise kMaxCoefficients");
  }
  template <typename C>
  static constexpr char kTag = 0;

  std::array<double, kMaxCoefficients> bytes_{};
  const char* tag_ = nullptr;
};

struct PassArgs {
  // The algorithm's constants (protocol.h: <algorithm>::Constants).
  Coefficients constants;
  // Per-tensor coefficients from the host phase (bias corrections, trust
  // ratios, ...), one row per tensor of the group.
  std::vector<Coefficients> per_tensor;
  // Gradients are read as g * inv_grad_scale (a GradScaler's unscaling, in
  // registers: the gradients are not written). Passes name their gradient
  // array with kGrad.
  double inv_grad_scale = 1.0;
};

// Per-tensor sums of a reducing pass: one row per tensor.
using Sums = std::vector<std::array<double, kMaxSums>>;

enum class Capability : int { Default = 0, AVX2 = 1, AVX512 = 2 };

// Scratch of the driver, per calling thread, reused across steps: where each
// tensor's chunks start, and one partial sum per chunk and reduction.
struct Workspace {
  std::vector<int64_t> first_chunk;
  std::vector<double> partials;
};
// The workspace sized for `group` with `sums_per_chunk` zeroed partials, and
// `sums` reset to one zero row per tensor. Defined outside the per-ISA builds,
// so that no std::vector code is compiled with their instruction sets (the
// linker keeps one copy of such inline functions, whichever build it is from).
Workspace& prepare_workspace(const Group& group, int sums_per_chunk);
void reset_sums(Sums& sums, size_t tensors);

// Runs `pass` with the selected instruction set. `sums` (for reducing passes)
// is resized to one row per tensor. Runs in one parallel region.
void run(Pass pass, const Group& group, const PassArgs& args, Sums* sums = nullptr);

// The host phase of one tensor between the passes of a pair: from the tensor's sums (which it may
// rewrite) it sets what the second pass reads of it (its per_tensor row, through the caller's own
// reference to the PassArgs). Called from several intra-op threads at once, for distinct tensors,
// so it writes only what belongs to its tensor; it must not throw.
using TensorPhase = c10::function_ref<void(int64_t, std::array<double, kMaxSums>&)>;

// What `run(first, ...); phase(t, sums[t]) for every t; run(second, ...)` does, with the same
// results bit for bit, where each tensor of one chunk goes through the three in turn while its
// arrays are in cache (driver.h, run_pair). `first` must be registered with `second` as its pair
// (register_pair); a group the pair has no kernel for (dtypes mixed, or state kept in 8-bit
// codes) runs as the two passes. The groups list the same tensors, each pass's arrays.
void run_pair(Pass first, const Group& first_group, const PassArgs& first_args, Pass second,
              const Group& second_group, const PassArgs& second_args, Sums& sums, TensorPhase phase);

bool supports_dtype(at::ScalarType dtype);

// False when the reference backend was chosen (set_cpu_capability("reference")).
bool fused_enabled();

// The instruction set used now, and those this CPU can run.
Capability selected_capability();
std::vector<Capability> available_capabilities();
const char* name_of(Capability capability);

// Pass tables, one per instruction set build, indexed [pass][dtype slot][state slot].
using PassFn = void (*)(const Group&, const PassArgs&, Sums*);
using PairFn = void (*)(const Group&, const PassArgs&, const Group&, const PassArgs&, Sums&, TensorPhase);
constexpr size_t kStateSlots = 4;
template <typename Fn>
using KernelRows = std::array<std::array<std::array<Fn, kStateSlots>, 4>, static_cast<size_t>(Pass::Count)>;
struct PassTable {
  KernelRows<PassFn> passes{};
  // run_pair's kernels, indexed by the second pass, and each second pass's first: an update
  // reads the sums of one reducing pass, which may come before several updates (AdamP's moments,
  // before the update that reads the gradient again and the one that does not).
  KernelRows<PairFn> pairs{};
  std::array<Pass, static_cast<size_t>(Pass::Count)> first_of{};
};

// Index of a supported dtype in a PassTable row: float, double, bfloat16, half.
int dtype_slot(at::ScalarType dtype);
// Index of a state dtype for parameters of `dtype`: 0 its own, 1 float32, 2 bfloat16, 3 8-bit
// (Byte: block-wise codes); -1 for any other.
int state_slot(at::ScalarType dtype, at::ScalarType state_dtype);

}  // namespace holocron::optim::kernels::cpu
