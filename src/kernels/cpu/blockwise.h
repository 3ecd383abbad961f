#pragma once

// 8-bit block-wise state (include/holocron/optim/quantization.h) as both sides of the fused
// kernels use it: the functional layer builds the two dynamic maps once
// (src/functional/quantization.cpp), and the driver decodes and encodes a block of a state array
// with them (driver.h). The encoder is written once, here; its functions have internal linkage,
// so that each instruction-set build compiles its own copy.

#include <cstdint>
#include <cstring>

namespace holocron::optim::kernels::cpu {

// Elements per block: a divisor of kChunk, so blocks never straddle chunks or threads.
constexpr int64_t kBlock = 256;

// One dynamic map, as the encoder reads it: a normalized value's top 16 bits (sign, exponent and
// 7 mantissa bits) pick a bucket, no bucket holds more than one threshold (checked when the map
// is made), so a code is the bucket's first code plus one comparison.
struct QuantizationMap {
  const float* values = nullptr;        // 256, ascending
  const float* thresholds = nullptr;    // 256: the smallest float above each midpoint, then +inf
  // Per bucket (blockwise::kBuckets per sign), then 4 bytes of padding: the vector encoders
  // gather 4 bytes at each bucket's offset.
  const uint8_t* first_code = nullptr;
  // Per bucket (blockwise::kBuckets per sign), what the vector encoders gather instead of the
  // code and then its threshold: the bucket's first code in bits 0-7, and in bits 8-24 the key a
  // value's low 16 bits (reversed for negatives: blockwise::low_key) must reach to take the
  // next code; kNoThreshold where the bucket holds none. A bucket's values share their top 16
  // bits, so that comparison is the float comparison with the threshold.
  const uint32_t* packed = nullptr;
  uint8_t zero_code = 0;                // the code of 0: a block holding an inf or a NaN
  // The unsigned map (second moments): a positive value whose nearest map value is 0 takes the
  // least positive one instead, code zero_code + 1. A second moment rounded to 0 under a first
  // moment that is not would turn m / (sqrt(v) + eps) into m / eps: weights whose gradients are
  // rare (inputs mostly zero, embeddings) would jump.
  bool keeps_positive = false;
};

namespace blockwise {
namespace {

// Magnitudes below 2^-24 share bucket 0 (every code there is that of 0); the buckets end at 1.0.
constexpr uint32_t kFirstBucketBits = 0x3380;
constexpr uint32_t kBuckets = 0x3F80 - kFirstBucketBits + 1;
// QuantizationMap::packed's key of a bucket without a threshold: above every low_key.
constexpr uint32_t kNoThreshold = 0x10000;

// A value's low 16 bits, ordered as the value within its bucket: for a negative one, the larger
// the magnitude the smaller the value.
inline uint32_t low_key(uint32_t bits) { return (bits & 0xFFFF) ^ (bits >> 31 ? 0xFFFFu : 0u); }

inline uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

// The bucket of a normalized value (|y| <= 1): [0, kBuckets) for y >= +0, then the negatives.
inline uint32_t bucket_of(float normalized) {
  const uint32_t top = bits_of(normalized) >> 16;
  uint32_t magnitude = top & 0x7FFF;
  magnitude = magnitude < kFirstBucketBits ? kFirstBucketBits : magnitude > 0x3F80 ? 0x3F80 : magnitude;
  return (top >> 15) * kBuckets + (magnitude - kFirstBucketBits);
}

// The code of the map value nearest to `normalized`, the lower one on an exact tie (but never 0
// for a positive value under QuantizationMap::keeps_positive).
inline uint8_t encode(const QuantizationMap& map, float normalized) {
  const uint8_t first = map.first_code[bucket_of(normalized)];
  const uint8_t code = static_cast<uint8_t>(first + (normalized >= map.thresholds[first] ? 1 : 0));
  return static_cast<uint8_t>(code + (map.keeps_positive && code == map.zero_code && normalized > 0.0f ? 1 : 0));
}

}  // namespace
}  // namespace blockwise
}  // namespace holocron::optim::kernels::cpu
