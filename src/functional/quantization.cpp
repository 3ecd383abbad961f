// Block-wise 8-bit quantization (holocron/optim/quantization.h), with ATen ops: the definition
// that fused kernels keeping 8-bit state must reproduce bit for bit, and what converts a
// checkpoint between 32-bit and 8-bit state on any device.

#include "holocron/optim/quantization.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

#include "functional/common.h"
#include "kernels/cpu/blockwise.h"
#include "kernels/cpu/pass.h"

namespace {

// Sizes are SymInts, so that the fake kernels trace with dynamic shapes.
c10::SymInt blocks_of(const c10::SymInt& numel) {
  using holocron::optim::functional::kQuantizationBlock;
  return (numel + (kQuantizationBlock - 1)) / kQuantizationBlock;
}

}  // namespace

namespace holocron::optim::functional {
namespace {

using kernels::cpu::blockwise::bucket_of;
using kernels::cpu::blockwise::kBuckets;
using kernels::cpu::blockwise::kFirstBucketBits;

float float_of(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// The search without a search, for the CPU (kernels/cpu/blockwise.h): a bucket per top 16 bits
// of a normalized value, and one comparison.
struct DynamicMap {
  at::Tensor values;  // 256, ascending
  // thresholds[k]: the smallest float32 above the exact midpoint of values k and k + 1, so that
  // the number of thresholds <= y is the index of y's nearest value, the lower on a tie.
  at::Tensor thresholds;  // 255
  std::array<float, 256> threshold_list{};  // the thresholds, then +inf
  std::vector<uint8_t> first_code;  // per bucket: the number of thresholds <= its least value
  std::vector<uint32_t> packed;     // per bucket: QuantizationMap::packed
  uint8_t zero_code = 0;
  kernels::cpu::QuantizationMap view;  // the above, as the fused kernels read it

  uint8_t encode(float normalized) const { return kernels::cpu::blockwise::encode(view, normalized); }
};

void make_buckets(DynamicMap& map, bool keeps_positive) {
  const float* t = map.thresholds.const_data_ptr<float>();
  std::copy(t, t + 255, map.threshold_list.begin());
  map.threshold_list[255] = std::numeric_limits<float>::infinity();
  auto count_up_to = [&](float y) {
    return static_cast<int>(std::upper_bound(t, t + 255, y) - t);
  };
  // Padded: the fused kernels' vector encoders gather 4 bytes at each bucket's offset.
  map.first_code.assign(2 * kBuckets + 4, 0);
  map.packed.assign(2 * kBuckets, 0);
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t k = 0; k < kBuckets; ++k) {
      const float least_magnitude = k == 0 ? 0.0f : float_of((k + kFirstBucketBits) << 16);
      const float largest_magnitude = float_of(((k + kFirstBucketBits) << 16) | 0xFFFF);
      const float least = sign ? -largest_magnitude : least_magnitude;
      const float largest = sign ? -least_magnitude : largest_magnitude;
      const int first = count_up_to(least);
      const int inside = count_up_to(largest) - first;
      TORCH_INTERNAL_ASSERT(inside <= 1, "a bucket of the quantization map holds two thresholds");
      // Bucket 0 also holds the magnitudes below it, whose low bits say nothing.
      TORCH_INTERNAL_ASSERT(k > 0 || inside == 0, "the quantization map's first bucket holds a threshold");
      map.first_code[sign * kBuckets + k] = static_cast<uint8_t>(first);
      uint32_t threshold_bits = 0;
      if (inside == 1) std::memcpy(&threshold_bits, &map.threshold_list[first], sizeof threshold_bits);
      const uint32_t key = inside == 1 ? kernels::cpu::blockwise::low_key(threshold_bits)
                                       : kernels::cpu::blockwise::kNoThreshold;
      map.packed[sign * kBuckets + k] = static_cast<uint32_t>(first) | key << 8;
    }
  }
  map.zero_code = static_cast<uint8_t>(count_up_to(0.0f));
  map.view = {.values = map.values.const_data_ptr<float>(),
              .thresholds = map.threshold_list.data(),
              .first_code = map.first_code.data(),
              .packed = map.packed.data(),
              .zero_code = map.zero_code,
              .keeps_positive = keeps_positive};
}

std::unique_ptr<DynamicMap> make_map(bool is_signed) {
  // bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8), operation for
  // operation in float32 (linspace, the midpoints of its bins, their product with each decade),
  // so that our codes mean what its codes mean. Its 10 ** -6 ... 10 ** 0 are correctly rounded
  // doubles, as these literals are.
  static constexpr double kDecades[] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0};
  const auto cpu_float = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> parts;
  for (int i = 0; i < 7; ++i) {
    const int64_t items = is_signed ? (int64_t{1} << i) + 1 : (int64_t{1} << (i + 1)) + 1;
    const auto bounds = at::linspace(0.1, 1.0, items, cpu_float);
    const auto means = (bounds.slice(0, 0, items - 1) + bounds.slice(0, 1, items)) / 2.0;
    parts.push_back(means * kDecades[i]);
    if (is_signed) parts.push_back(means * -kDecades[i]);
  }
  parts.push_back(at::tensor({0.0f, 1.0f}, cpu_float));
  auto values = std::get<0>(at::cat(parts).sort());
  TORCH_INTERNAL_ASSERT(values.numel() == 256);

  const float* v = values.const_data_ptr<float>();
  auto thresholds = at::empty({255}, cpu_float);
  float* t = thresholds.mutable_data_ptr<float>();
  for (int64_t k = 0; k < 255; ++k) {
    // Two floats' sum and half are exact in double.
    const double midpoint = (static_cast<double>(v[k]) + static_cast<double>(v[k + 1])) / 2.0;
    float above = static_cast<float>(midpoint);
    if (static_cast<double>(above) <= midpoint) above = std::nextafter(above, std::numeric_limits<float>::infinity());
    t[k] = above;
  }
  auto map = std::make_unique<DynamicMap>();
  map->values = values;
  map->thresholds = thresholds;
  // Unsigned (second moments): no positive value becomes 0 (QuantizationMap::keeps_positive).
  TORCH_INTERNAL_ASSERT(is_signed || v[0] == 0.0f, "the unsigned map starts at 0");
  make_buckets(*map, !is_signed);
  return map;
}

const DynamicMap& dynamic_map(bool is_signed) {
  // Never moved once made: the kernels' views point into them.
  static const std::unique_ptr<DynamicMap> maps[2] = {make_map(false), make_map(true)};
  return *maps[is_signed ? 1 : 0];
}

// `flat` (1-D) padded with zeros to whole blocks, as [blocks, kQuantizationBlock].
at::Tensor as_blocks(const at::Tensor& flat) {
  const auto numel = flat.sym_numel();
  const auto pad = blocks_of(numel) * kQuantizationBlock - numel;
  return at::constant_pad_nd_symint(flat, {c10::SymInt(0), pad}, 0).view({-1, kQuantizationBlock});
}

// The first `numel` elements of `blocks`, in `sizes`.
at::Tensor unblocked(const at::Tensor& blocks, const c10::SymInt& numel, c10::SymIntArrayRef sizes) {
  return blocks.reshape({-1}).slice_symint(0, 0, numel).reshape_symint(sizes);
}

}  // namespace

at::Tensor dynamic_quantization_map(bool is_signed) { return dynamic_map(is_signed).values.clone(); }

namespace detail {
const kernels::cpu::QuantizationMap& blockwise_map(bool is_signed) { return dynamic_map(is_signed).view; }
}  // namespace detail

namespace {

// The CPU path (unless the reference backend was chosen): the same codes and scales as the ATen
// ops below, without their temporaries.
BlockwiseCodes quantize_on_cpu(const at::Tensor& values, const DynamicMap& map) {
  const auto input = values.to(at::kFloat).contiguous();
  const int64_t numel = input.numel();
  auto codes = at::empty(values.sizes(), values.options().dtype(at::kByte));
  auto absmax = at::empty({blocks_of(numel).expect_int()}, values.options().dtype(at::kFloat));
  const float* x = input.const_data_ptr<float>();
  uint8_t* out = codes.mutable_data_ptr<uint8_t>();
  float* scales = absmax.mutable_data_ptr<float>();
  at::parallel_for(0, absmax.numel(), 64, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = b * kQuantizationBlock;
      const int64_t end = std::min(begin + kQuantizationBlock, numel);
      float largest = 0.0f;
      bool finite = true;
      for (int64_t i = begin; i < end; ++i) {
        finite = finite && std::isfinite(x[i]);
        largest = std::max(largest, std::fabs(x[i]));
      }
      if (!finite) {
        scales[b] = std::numeric_limits<float>::quiet_NaN();
        std::fill(out + begin, out + end, map.zero_code);
        continue;
      }
      scales[b] = largest;
      const float divisor = largest > 0.0f ? largest : 1.0f;
      for (int64_t i = begin; i < end; ++i) out[i] = map.encode(x[i] / divisor);
    }
  });
  return {codes, absmax};
}

at::Tensor dequantize_on_cpu(const at::Tensor& codes, const at::Tensor& absmax, const DynamicMap& map,
                             at::ScalarType dtype) {
  const auto input = codes.contiguous();
  const auto scales = absmax.contiguous();
  auto decoded = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  const uint8_t* c = input.const_data_ptr<uint8_t>();
  const float* s = scales.const_data_ptr<float>();
  const float* table = map.values.const_data_ptr<float>();
  float* out = decoded.mutable_data_ptr<float>();
  at::parallel_for(0, input.numel(), kQuantizationBlock * 64, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) out[i] = table[c[i]] * s[i / kQuantizationBlock];
  });
  return decoded.to(dtype);
}

}  // namespace

BlockwiseCodes quantize_blockwise(const at::Tensor& values, bool is_signed) {
  TORCH_CHECK_TYPE(values.defined() && at::isFloatingType(values.scalar_type()),
                   "quantize_blockwise: values have dtype ",
                   values.defined() ? c10::toString(values.scalar_type()) : "undefined",
                   "; expected a floating-point tensor");
  TORCH_CHECK(values.layout() == at::kStrided, "quantize_blockwise: values have layout ", values.layout(),
              "; expected a dense tensor");
  const auto& map = dynamic_map(is_signed);
  if (values.device().is_cpu() && kernels::cpu::fused_enabled()) return quantize_on_cpu(values, map);
  const auto blocks = as_blocks(values.to(at::kFloat).reshape({-1}));

  const auto finite = at::isfinite(blocks).all(1, /*keepdim=*/true);
  auto absmax = blocks.abs().amax(1, /*keepdim=*/true);
  // A block of zeros divides by 1 (its codes are those of 0); a block holding an inf or a NaN
  // gets the code of 0 everywhere and a NaN scale.
  const auto divisor = at::where(absmax > 0, absmax, at::ones_like(absmax));
  const auto normalized = at::where(finite, blocks / divisor, at::zeros_like(blocks));
  absmax = at::where(finite, absmax, at::full_like(absmax, std::numeric_limits<float>::quiet_NaN()));

  const auto thresholds = map.thresholds.to(values.device());
  auto codes = at::searchsorted(thresholds, normalized, /*out_int32=*/true, /*right=*/true);
  if (!is_signed) codes = at::where((normalized > 0) & (codes == 0), at::ones_like(codes), codes);
  codes = codes.to(at::kByte);
  codes = unblocked(codes, values.sym_numel(), values.sym_sizes()).contiguous();
  return {codes, absmax.reshape({-1}).contiguous()};
}

at::Tensor dequantize_blockwise(const at::Tensor& codes, const at::Tensor& absmax, bool is_signed,
                                at::ScalarType dtype) {
  TORCH_CHECK_TYPE(codes.defined() && codes.scalar_type() == at::kByte, "dequantize_blockwise: codes have dtype ",
                   codes.defined() ? c10::toString(codes.scalar_type()) : "undefined", "; expected uint8");
  TORCH_CHECK_TYPE(absmax.defined() && absmax.scalar_type() == at::kFloat, "dequantize_blockwise: absmax has dtype ",
                   absmax.defined() ? c10::toString(absmax.scalar_type()) : "undefined", "; expected float32");
  TORCH_CHECK_TYPE(at::isFloatingType(dtype), "dequantize_blockwise: dtype is ", dtype,
                   "; expected a floating-point dtype");
  const auto blocks = blocks_of(codes.sym_numel());
  TORCH_CHECK_VALUE(absmax.dim() == 1 && absmax.sym_numel() == blocks, "dequantize_blockwise: absmax has shape ",
                    absmax.sym_sizes(), " but ", codes.sym_numel(), " codes make ", blocks, " blocks of ",
                    kQuantizationBlock);
  TORCH_CHECK_VALUE(absmax.device() == codes.device(), "dequantize_blockwise: absmax is on ", absmax.device(),
                    " but the codes are on ", codes.device());
  const auto& map = dynamic_map(is_signed);
  if (codes.device().is_cpu() && kernels::cpu::fused_enabled()) return dequantize_on_cpu(codes, absmax, map, dtype);
  const auto table = map.values.to(codes.device());
  const auto decoded = as_blocks(table.index({codes.reshape({-1}).to(at::kLong)})) * absmax.unsqueeze(1);
  return unblocked(decoded, codes.sym_numel(), codes.sym_sizes()).to(dtype);
}

}  // namespace holocron::optim::functional

namespace holocron::optim::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_blockwise_op(const at::Tensor& values, bool is_signed) {
  auto out = functional::quantize_blockwise(values, is_signed);
  return {std::move(out.codes), std::move(out.absmax)};
}

at::Tensor dequantize_blockwise_op(const at::Tensor& codes, const at::Tensor& absmax, bool is_signed,
                                   std::optional<at::ScalarType> dtype) {
  return functional::dequantize_blockwise(codes, absmax, is_signed, dtype.value_or(at::kFloat));
}

// Shapes only, for fake tensors (torch.compile, opcheck): the map is a real tensor, which a
// trace cannot take in, so the kernels above are not traced through.
std::tuple<at::Tensor, at::Tensor> quantize_blockwise_meta(const at::Tensor& values, bool /*is_signed*/) {
  TORCH_CHECK_TYPE(at::isFloatingType(values.scalar_type()), "quantize_blockwise: values have dtype ",
                   values.scalar_type(), "; expected a floating-point tensor");
  const auto options = values.options();
  return {at::empty_symint(values.sym_sizes(), options.dtype(at::kByte)),
          at::empty_symint({blocks_of(values.sym_numel())}, options.dtype(at::kFloat))};
}

at::Tensor dequantize_blockwise_meta(const at::Tensor& codes, const at::Tensor& absmax, bool /*is_signed*/,
                                     std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_VALUE(absmax.dim() == 1 && absmax.sym_numel() == blocks_of(codes.sym_numel()),
                    "dequantize_blockwise: absmax has shape ", absmax.sym_sizes(), " for ", codes.sym_numel(),
                    " codes");
  TORCH_CHECK_VALUE(absmax.device() == codes.device(), "dequantize_blockwise: absmax is on ", absmax.device(),
                    " but the codes are on ", codes.device());
  return at::empty_symint(codes.sym_sizes(), codes.options().dtype(dtype.value_or(at::kFloat)));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(holocron, m) {
  m.def("quantize_blockwise(Tensor values, bool signed) -> (Tensor codes, Tensor absmax)");
  m.def("dequantize_blockwise(Tensor codes, Tensor absmax, bool signed, ScalarType? dtype=None) -> Tensor");
}

// Written with ATen ops: one kernel serves every device.
TORCH_LIBRARY_IMPL(holocron, CompositeExplicitAutograd, m) {
  m.impl("quantize_blockwise", TORCH_FN(quantize_blockwise_op));
  m.impl("dequantize_blockwise", TORCH_FN(dequantize_blockwise_op));
}

TORCH_LIBRARY_IMPL(holocron, Meta, m) {
  m.impl("quantize_blockwise", TORCH_FN(quantize_blockwise_meta));
  m.impl("dequantize_blockwise", TORCH_FN(dequantize_blockwise_meta));
}

}  // namespace holocron::optim::ops
