// Block-wise 8-bit quantization through the C++ API (holocron/optim/quantization.h): every code
// against a naive nearest-value search in double, and the checks, which change nothing.

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include <holocron/optim.h>

namespace {

namespace F = holocron::optim::functional;

// The nearest map value's index in exact arithmetic, the lower one on a tie; with the unsigned
// map (which starts at 0), never 0 for a positive value.
int64_t nearest(const at::Tensor& map, float normalized) {
  const auto* v = map.const_data_ptr<float>();
  int64_t best = 0;
  for (int64_t k = 1; k < 256; ++k) {
    if (std::fabs(double{normalized} - v[k]) < std::fabs(double{normalized} - v[best])) best = k;
  }
  const bool is_unsigned = v[0] == 0.0f;
  return is_unsigned && best == 0 && normalized > 0.0f ? 1 : best;
}

TEST(Quantization, CodesAreTheNearestMapValues) {
  for (const bool is_signed : {true, false}) {
    const auto map = F::dynamic_quantization_map(is_signed);
    ASSERT_EQ(map.numel(), 256);
    at::manual_seed(5);
    auto values = at::randn({3, 301}, at::kDouble) * at::exp(5 * at::randn({3, 301}, at::kDouble));
    if (!is_signed) values = values.abs();
    const auto out = F::quantize_blockwise(values, is_signed);
    ASSERT_EQ(out.codes.sizes(), values.sizes());
    ASSERT_EQ(out.absmax.numel(), 4);  // 903 elements: three whole blocks and 135 more
    const auto flat = values.to(at::kFloat).reshape({-1});
    const auto* x = flat.const_data_ptr<float>();
    const auto* codes = out.codes.const_data_ptr<uint8_t>();
    const auto* absmax = out.absmax.const_data_ptr<float>();
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const int64_t block = i / F::kQuantizationBlock;
      float largest = 0;
      for (int64_t j = block * F::kQuantizationBlock; j < std::min<int64_t>((block + 1) * F::kQuantizationBlock, flat.numel()); ++j) {
        largest = std::max(largest, std::fabs(x[j]));
      }
      ASSERT_EQ(absmax[block], largest);
      ASSERT_EQ(codes[i], nearest(map, x[i] / largest)) << "element " << i;
    }
    const auto decoded = F::dequantize_blockwise(out.codes, out.absmax, is_signed, at::kDouble);
    ASSERT_EQ(decoded.scalar_type(), at::kDouble);
    const auto expected = (map.index({out.codes.reshape({-1}).to(at::kLong)}) *
                           out.absmax.repeat_interleave(F::kQuantizationBlock).slice(0, 0, flat.numel()))
                              .reshape(values.sizes())
                              .to(at::kDouble);
    ASSERT_TRUE(at::equal(decoded, expected));
  }
}

TEST(Quantization, NonFiniteBlocksDecodeToNaN) {
  auto values = at::ones({2 * F::kQuantizationBlock});
  values.index_put_({3}, std::numeric_limits<float>::infinity());
  const auto out = F::quantize_blockwise(values, true);
  const auto decoded = F::dequantize_blockwise(out.codes, out.absmax, true);
  EXPECT_TRUE(decoded.slice(0, 0, F::kQuantizationBlock).isnan().all().item<bool>());
  EXPECT_TRUE(at::equal(decoded.slice(0, F::kQuantizationBlock), at::ones({F::kQuantizationBlock})));
}

TEST(Quantization, BadArgumentsAreRefusedByName) {
  const auto out = F::quantize_blockwise(at::randn({300}), true);
  const auto codes = out.codes.clone();
  EXPECT_THROW(F::quantize_blockwise(at::arange(3), true), c10::TypeError);
  EXPECT_THROW(F::dequantize_blockwise(out.codes.to(at::kInt), out.absmax, true), c10::TypeError);
  EXPECT_THROW(F::dequantize_blockwise(out.codes, out.absmax, true, at::kLong), c10::TypeError);
  try {
    F::dequantize_blockwise(out.codes, at::ones({3}), true);
    FAIL() << "a wrong number of scales was accepted";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("absmax has shape [3] but 300 codes make 2 blocks of 256"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(at::equal(out.codes, codes));
}

}  // namespace
