// Picks the instruction-set build of the fused kernels at run time.

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "holocron/optim/functional.h"
#include "kernels/cpu/pass.h"

namespace holocron::optim::kernels::cpu {

namespace DEFAULT { const PassTable& pass_table(); }
#ifdef HOLOCRON_OPTIM_HAVE_X86_KERNELS
namespace AVX2 { const PassTable& pass_table(); }
namespace AVX512 { const PassTable& pass_table(); }
#endif

namespace {

bool cpu_runs(Capability capability) {
#ifdef HOLOCRON_OPTIM_HAVE_X86_KERNELS
  switch (capability) {
    case Capability::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
    case Capability::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Capability::Default:
      return true;
  }
  return false;
#else
  return capability == Capability::Default;
#endif
}

Capability best_capability() {
  for (auto c : {Capability::AVX512, Capability::AVX2}) {
    if (cpu_runs(c)) return c;
  }
  return Capability::Default;
}

// -1: the reference (ATen) backend; otherwise a Capability.
constexpr int kReference = -1;

int parse(const std::string& name) {
  if (name == "reference") return kReference;
  if (name == "default") return static_cast<int>(Capability::Default);
  if (name == "avx2") return static_cast<int>(Capability::AVX2);
  if (name == "avx512") return static_cast<int>(Capability::AVX512);
  if (name == "auto") return static_cast<int>(best_capability());
  TORCH_CHECK_VALUE(false, "unknown CPU capability '", name,
                    "' (expected auto, avx512, avx2, default or reference)");
}

int checked(int choice, const std::string& name) {
  TORCH_CHECK_VALUE(choice == kReference || cpu_runs(static_cast<Capability>(choice)),
                    "this CPU cannot run the '", name, "' kernels");
  return choice;
}

// HOLOCRON_OPTIM_CPU_CAPABILITY, like ATen's ATEN_CPU_CAPABILITY, caps the
// instruction set (or picks the reference backend) for a whole process.
int initial_choice() {
  const char* env = std::getenv("HOLOCRON_OPTIM_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return static_cast<int>(best_capability());
  try {
    return checked(parse(env), env);
  } catch (const c10::Error& e) {
    TORCH_WARN("HOLOCRON_OPTIM_CPU_CAPABILITY ignored: ", e.msg());
    return static_cast<int>(best_capability());
  }
}

std::atomic<int>& choice() {
  static std::atomic<int> value{initial_choice()};
  return value;
}

const PassTable& table_of(Capability capability) {
#ifdef HOLOCRON_OPTIM_HAVE_X86_KERNELS
  if (capability == Capability::AVX512) return AVX512::pass_table();
  if (capability == Capability::AVX2) return AVX2::pass_table();
#endif
  (void)capability;
  return DEFAULT::pass_table();
}

}  // namespace

const char* name_of(Capability capability) {
  switch (capability) {
    case Capability::AVX512: return "avx512";
    case Capability::AVX2: return "avx2";
    case Capability::Default: return "default";
  }
  return "default";
}

bool supports_dtype(at::ScalarType dtype) { return dtype_slot(dtype) >= 0; }

int dtype_slot(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kBFloat16: return 2;
    case at::kHalf: return 3;
    default: return -1;
  }
}

int state_slot(at::ScalarType dtype, at::ScalarType state_dtype) {
  if (state_dtype == dtype || state_dtype == at::ScalarType::Undefined) return 0;
  if (state_dtype == at::kFloat) return 1;
  if (state_dtype == at::kBFloat16) return 2;
  // Float64 parameters with 8-bit state are left to the ATen path (no fused build: rare, and each
  // build costs compile time on every instruction set).
  if (state_dtype == at::kByte && dtype != at::kDouble) return 3;
  return -1;
}

Capability selected_capability() {
  const int c = choice().load();
  return c == kReference ? Capability::Default : static_cast<Capability>(c);
}

std::vector<Capability> available_capabilities() {
  std::vector<Capability> out;
  for (auto c : {Capability::Default, Capability::AVX2, Capability::AVX512}) {
    if (cpu_runs(c)) out.push_back(c);
  }
  return out;
}

Workspace& prepare_workspace(const Group& group, int sums_per_chunk) {
  thread_local Workspace ws;
  const size_t n = group.tensors.size();
  ws.first_chunk.resize(n + 1);
  ws.first_chunk[0] = 0;
  for (size_t t = 0; t < n; ++t) {
    ws.first_chunk[t + 1] = ws.first_chunk[t] + (group.tensors[t].numel + kChunk - 1) / kChunk;
  }
  ws.partials.assign(static_cast<size_t>(ws.first_chunk[n]) * sums_per_chunk, 0.0);
  return ws;
}

void reset_sums(Sums& sums, size_t tensors) { sums.assign(tensors, {}); }

bool fused_enabled() { return choice().load() != kReference; }

namespace {

// Tensors whose kernels are the same: the same dtype and state slot.
bool same_kernel(const TensorSlot& a, const TensorSlot& b) {
  return a.dtype == b.dtype && state_slot(a.dtype, a.state_dtype) == state_slot(b.dtype, b.state_dtype);
}

bool one_kernel(const Group& group) {
  const auto& tensors = group.tensors;
  return std::all_of(tensors.begin(), tensors.end(), [&](const TensorSlot& t) { return same_kernel(t, tensors[0]); });
}

}  // namespace

void run(Pass pass, const Group& group, const PassArgs& args, Sums* sums) {
  const auto& row = table_of(selected_capability()).passes[static_cast<size_t>(pass)];
  auto kernel = [&](const TensorSlot& slot) {
    const int d = dtype_slot(slot.dtype);
    const int s = state_slot(slot.dtype, slot.state_dtype);
    TORCH_INTERNAL_ASSERT(d >= 0 && s >= 0 && row[d][s] != nullptr, "no fused kernel for ", slot.dtype,
                          " with state of ", slot.state_dtype);
    return row[d][s];
  };
  const auto& tensors = group.tensors;
  if (one_kernel(group)) {
    kernel(tensors.empty() ? TensorSlot{} : tensors[0])(group, args, sums);
    return;
  }
  // A group mixing dtypes or state dtypes: one run per kernel, over its tensors only.
  if (sums != nullptr) reset_sums(*sums, tensors.size());
  std::vector<bool> done(tensors.size(), false);
  for (size_t first = 0; first < tensors.size(); ++first) {
    if (done[first]) continue;
    Group part;
    PassArgs part_args;
    part_args.constants = args.constants;
    part_args.inv_grad_scale = args.inv_grad_scale;
    std::vector<size_t> index;
    for (size_t i = first; i < tensors.size(); ++i) {
      if (!same_kernel(tensors[i], tensors[first])) continue;
      done[i] = true;
      index.push_back(i);
      part.tensors.push_back(tensors[i]);
      if (!args.per_tensor.empty()) part_args.per_tensor.push_back(args.per_tensor[i]);
    }
    Sums part_sums;
    kernel(tensors[first])(part, part_args, sums != nullptr ? &part_sums : nullptr);
    if (sums != nullptr) {
      for (size_t k = 0; k < index.size(); ++k) (*sums)[index[k]] = part_sums[k];
    }
  }
}

void run_pair(Pass first, const Group& first_group, const PassArgs& first_args, Pass second,
              const Group& second_group, const PassArgs& second_args, Sums& sums, TensorPhase phase) {
  const auto& table = table_of(selected_capability());
  TORCH_INTERNAL_ASSERT(table.first_of[static_cast<size_t>(second)] == first && first != second,
                        "run_pair: the passes are not registered as a pair");
  TORCH_INTERNAL_ASSERT(first_group.tensors.size() == second_group.tensors.size(),
                        "run_pair: the groups hold different tensors");
  PairFn pair = nullptr;
  if (!first_group.tensors.empty() && one_kernel(first_group) && one_kernel(second_group)) {
    const auto& a = first_group.tensors[0];
    const auto& b = second_group.tensors[0];
    const int d = dtype_slot(a.dtype);
    const int s = state_slot(a.dtype, a.state_dtype);
    if (d >= 0 && s >= 0 && same_kernel(a, b)) pair = table.pairs[static_cast<size_t>(second)][d][s];
  }
  if (pair != nullptr) {
    pair(first_group, first_args, second_group, second_args, sums, phase);
    return;
  }
  run(first, first_group, first_args, &sums);
  for (size_t t = 0; t < sums.size(); ++t) phase(static_cast<int64_t>(t), sums[t]);
  run(second, second_group, second_args);
}

}  // namespace holocron::optim::kernels::cpu

namespace holocron::optim::functional {

namespace cpu = kernels::cpu;

std::string cpu_capability() {
  return cpu::fused_enabled() ? cpu::name_of(cpu::selected_capability()) : "reference";
}

void set_cpu_capability(const std::string& name) { cpu::choice().store(cpu::checked(cpu::parse(name), name)); }

std::vector<std::string> available_cpu_capabilities() {
  std::vector<std::string> out{"reference"};
  for (auto c : cpu::available_capabilities()) out.emplace_back(cpu::name_of(c));
  return out;
}

}  // namespace holocron::optim::functional
