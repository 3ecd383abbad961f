#pragma once

/// \file
/// Block-wise 8-bit quantization through bitsandbytes' dynamic map: the storage format of 8-bit
/// optimizer state (issue 17), defined here with ATen ops for every device. Fused kernels that
/// keep state in this format must produce the same codes and scales bit for bit.

#include <ATen/Tensor.h>

#include <cstdint>

namespace holocron::optim::functional {

/// Elements per block: each block of a tensor (in row-major order; the last may be shorter)
/// shares one float32 scale, its largest magnitude.
constexpr int64_t kQuantizationBlock = 256;

/// The 256 values codes stand for, ascending, float32 on the CPU: bitsandbytes'
/// `create_dynamic_map(signed)` (7 decades from 1e-7 to 1, each split linearly, finer towards 1;
/// then 0 and 1), computed with the same float32 operations, so its codes and ours mean the same.
/// \param is_signed True for values of either sign (first moments: 127 negative values, 0, 128
///   positive ones up to 1); false for non-negative values (second moments: 0, then 255 positive).
at::Tensor dynamic_quantization_map(bool is_signed);

/// A tensor stored as 8-bit codes: `codes` (uint8, the values' shape) index the dynamic map, and
/// an element is `map[code] * absmax[block]`.
struct BlockwiseCodes {
  /// One code per element, contiguous, the values' shape.
  at::Tensor codes;
  /// One float32 scale per block of kQuantizationBlock elements: its largest magnitude, or NaN
  /// for a block that holds an inf or a NaN (the whole block then decodes to NaN, as a moment that
  /// diverged would poison its element's update).
  at::Tensor absmax;
};

/// Quantizes `values` (any floating dtype, converted to float32 first) block by block: each value
/// divided by its block's absmax (in float32) becomes the code of the nearest map value, the lower
/// one on an exact tie, so that the codes do not depend on how the search is done. A block of
/// zeros has absmax 0 and the code of 0 everywhere; with the unsigned map a negative value gets
/// the code of 0, its nearest, and a positive value whose nearest is 0 gets the least positive
/// value's code instead (bitsandbytes' encoder would give 0): a second moment must not vanish
/// under a first moment that does not, or m / (sqrt(v) + eps) becomes m / eps. Runs on the
/// values' device; nothing is written to them.
/// \throws c10::TypeError for values that are not floating point.
/// \throws c10::Error for a sparse tensor.
BlockwiseCodes quantize_blockwise(const at::Tensor& values, bool is_signed);

/// The values that `codes` and `absmax` stand for, `map[code] * absmax[block]` in float32, then
/// converted to `dtype`.
/// \throws c10::TypeError when `codes` is not uint8, `absmax` not float32, or `dtype` not floating.
/// \throws c10::ValueError when `absmax` does not hold one scale per block of `codes`, or lies on
///   another device.
at::Tensor dequantize_blockwise(const at::Tensor& codes, const at::Tensor& absmax, bool is_signed,
                                at::ScalarType dtype = at::kFloat);

}  // namespace holocron::optim::functional
