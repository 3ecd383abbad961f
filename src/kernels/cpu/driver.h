#pragma once

// The multi-tensor driver of the fused CPU kernels, compiled once per
// instruction set (this header must only be included by files built with
// CPU_CAPABILITY set; everything here lives in a namespace named after it, so
// the builds never share a symbol).
//
// A pass is a small struct (see the algorithm files next to this one); what
// it takes from the host is declared by name in protocol.h:
//   using scalar_t;                     the group's dtype
//   kNarrow, kWide                      arrays of scalar_t, then of its math type
//   kRead, kWrite                       the arrays loaded / stored, as
//                                       protocol::slot_set(kSlot.param, ...)
//                                       of the slots of its protocol Arrays
//   using state_t; kState (optional)    the dtype its state arrays are stored
//                                       in, and which narrow arrays they are:
//                                       a pass declaring them is also built
//                                       for float32 and bfloat16 state, loaded
//                                       into and stored from the math type,
//                                       and for 8-bit block-wise state
//                                       (state_t Blockwise8, below)
//   kSums                               per-tensor reductions (0: none)
//   kGrad (optional)                    the gradient's slot: loaded as
//                                       g * args.inv_grad_scale
//   kParam (with kGrad)                 the weights' slot (-1: none), read as
//                                       p + c where they are Kahan-compensated
//                                       (TensorSlot::compensation)
//   sum_t (optional)                    the type they are summed in: double
//                                       where float lanes are not enough
//   Body for_tensor(int64_t t) const    constants of tensor t, once per chunk,
//                                       from args.constants.get<Constants>()
//                                       and args.per_tensor[t].get<PerTensor>()
//   template <class A> void Body::operator()(V* x, A& acc) const
//                                       the math of one vector of elements:
//                                       x[kSlot.name] holds that array; written
//                                       arrays are stored back, sums go to acc.
// The driver cuts the whole group into chunks of kChunk elements, runs them in
// one parallel region, and sums each reduction in a fixed order: per element
// into kLanes lanes (element i -> lane i % kLanes), the lanes in order at the
// end of a chunk, the chunks in order per tensor. So results are bitwise the
// same for any thread count, and for any of the instruction sets.

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <tuple>
#include <vector>

#include "kernels/cpu/pass.h"

// Everything a pass body calls is forced inline: a body left out of line
// keeps its sums in memory instead of registers, at half the speed.
#define HOLOCRON_KERNEL_INLINE C10_ALWAYS_INLINE
#if defined(__GNUC__)
#define HOLOCRON_LAMBDA_INLINE __attribute__((always_inline))
#else
#define HOLOCRON_LAMBDA_INLINE
#endif

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename T>
constexpr bool is_reduced_v = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// Half and bfloat16 are computed in float registers, as ATen does.
template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Loads and stores of one iteration's elements as `kPack` vectors of the math type.
template <typename T>
struct NarrowIo {
  using V = Vectorized<opmath_t<T>>;
  static constexpr int kPack = is_reduced_v<T> ? 2 : 1;
  static constexpr int64_t kStep = Vectorized<T>::size();
  static_assert(kStep == kPack * V::size(), "one iteration = kPack math vectors");

  HOLOCRON_KERNEL_INLINE static void load(const T* ptr, int64_t count, V* out) {
    if constexpr (is_reduced_v<T>) {
      const auto packed = count == kStep ? Vectorized<T>::loadu(ptr) : Vectorized<T>::loadu(ptr, count);
      std::tie(out[0], out[1]) = at::vec::convert_to_float<T>(packed);
    } else {
      out[0] = count == kStep ? V::loadu(ptr) : V::loadu(ptr, count);
    }
  }
  HOLOCRON_KERNEL_INLINE static void store(T* ptr, int64_t count, const V* in) {
    if constexpr (is_reduced_v<T>) {
      const auto packed = at::vec::convert_from_float<T>(in[0], in[1]);
      if (count == kStep) packed.store(ptr); else packed.store(ptr, count);
    } else {
      if (count == kStep) in[0].store(ptr); else in[0].store(ptr, count);
    }
  }
};

// Arrays of the math type walked in step with a narrow type's iterations.
template <typename T>
struct WideIo {
  using W = opmath_t<T>;
  using V = Vectorized<W>;
  static constexpr int kPack = NarrowIo<T>::kPack;

  static int64_t part(int64_t count, int k) {
    return std::clamp<int64_t>(count - k * V::size(), 0, V::size());
  }
  HOLOCRON_KERNEL_INLINE static void load(const W* ptr, int64_t count, V* out) {
    for (int k = 0; k < kPack; ++k) {
      const int64_t n = part(count, k);
      out[k] = n == V::size() ? V::loadu(ptr + k * V::size()) : n > 0 ? V::loadu(ptr + k * V::size(), n) : V(W(0));
    }
  }
  HOLOCRON_KERNEL_INLINE static void store(W* ptr, int64_t count, const V* in) {
    for (int k = 0; k < kPack; ++k) {
      const int64_t n = part(count, k);
      if (n == V::size()) in[k].store(ptr + k * V::size()); else if (n > 0) in[k].store(ptr + k * V::size(), n);
    }
  }
};

// State arrays stored as S, walked in step with T's iterations (kPack vectors of T's math type
// W): S == T is NarrowIo, S == W is WideIo; float32 parameters with bfloat16 state load half a
// bfloat16 vector; any other pair goes element by element (float64 parameters with lean state).
// Stores round to nearest even, as ATen's conversions do.
template <typename T, typename S>
struct StateIo {
  using W = opmath_t<T>;
  using V = Vectorized<W>;
  static constexpr int kPack = NarrowIo<T>::kPack;
  static constexpr int64_t kStep = NarrowIo<T>::kStep;

  HOLOCRON_KERNEL_INLINE static void load(const S* ptr, int64_t count, V* out) {
    if constexpr (std::is_same_v<S, T>) {
      NarrowIo<T>::load(ptr, count, out);
    } else if constexpr (std::is_same_v<S, W>) {
      WideIo<T>::load(ptr, count, out);
    } else if constexpr (std::is_same_v<W, float> && kStep == Vectorized<S>::size()) {
      NarrowIo<S>::load(ptr, count, out);  // half parameters, bfloat16 state
    } else if constexpr (std::is_same_v<T, float> && 2 * kStep == Vectorized<S>::size()) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
      // A whole iteration: one half-width load (ATen's counted load goes through memcpy).
      if constexpr (std::is_same_v<S, c10::BFloat16>) {
        if (count == kStep) {
#if defined(CPU_CAPABILITY_AVX512)
          __m512 wide;
          at::vec::cvtbf16_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ptr)), wide);
#else
          __m256 wide;
          at::vec::cvtbf16_fp32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ptr)), wide);
#endif
          out[0] = wide;
          return;
        }
      }
#endif
      out[0] = std::get<0>(at::vec::convert_to_float<S>(Vectorized<S>::loadu(ptr, count)));
    } else {
      alignas(64) W values[kStep] = {};
      for (int64_t l = 0; l < count; ++l) values[l] = static_cast<W>(ptr[l]);
      for (int k = 0; k < kPack; ++k) out[k] = V::loadu(values + k * V::size());
    }
  }
  HOLOCRON_KERNEL_INLINE static void store(S* ptr, int64_t count, const V* in) {
    if constexpr (std::is_same_v<S, T>) {
      NarrowIo<T>::store(ptr, count, in);
    } else if constexpr (std::is_same_v<S, W>) {
      WideIo<T>::store(ptr, count, in);
    } else if constexpr (std::is_same_v<W, float> && kStep == Vectorized<S>::size()) {
      NarrowIo<S>::store(ptr, count, in);
    } else if constexpr (std::is_same_v<T, float> && 2 * kStep == Vectorized<S>::size()) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<S, c10::BFloat16>) {
        if (count == kStep) {
#if defined(CPU_CAPABILITY_AVX512)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(ptr), at::vec::cvtfp32_bf16(__m512(in[0])));
#else
          _mm_storeu_si128(reinterpret_cast<__m128i*>(ptr), at::vec::cvtfp32_bf16(__m256(in[0])));
#endif
          return;
        }
      }
#endif
      at::vec::convert_from_float<S>(in[0], in[0]).store(ptr, count);
    } else {
      alignas(64) W values[kStep];
      for (int k = 0; k < kPack; ++k) in[k].store(values + k * V::size());
      for (int64_t l = 0; l < count; ++l) ptr[l] = static_cast<S>(values[l]);
    }
  }
};

// The state_t of a pass built for 8-bit block-wise state (TensorSlot::blockwise): each state
// array is either codes of blocks of kBlock elements with one scale each, or float32. A block's
// new values are needed whole before its scale is known, so the driver stages each block of those
// arrays in the math type on the stack: decoded before the block's iterations, which read and
// write the staged values, and encoded after them where the pass writes the array. The encoding
// is the definition's (functional/quantization.cpp): the same codes and scales bit for bit.
struct Blockwise8 {
  uint8_t code;
};

// `x` rounded to the dtype T (a no-op unless T is half or bfloat16): the
// value the reference would hold in a tensor of that dtype.
template <typename T, typename V>
HOLOCRON_KERNEL_INLINE V round_to(const V& x) {
  if constexpr (is_reduced_v<T>) {
    auto [low, high] = at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(x, x));
    (void)high;
    return low;
  } else {
    return x;
  }
}

// `x` as a value stored as S holds it: rounded to nearest even where S is narrower than x's
// type, as StateIo stores it (float64 through bfloat16 goes through float32, as c10's and
// ATen's conversions do).
template <typename S, typename V>
HOLOCRON_KERNEL_INLINE V round_through(const V& x) {
  using W = typename V::value_type;
  if constexpr (sizeof(S) >= sizeof(W)) {
    return x;
  } else if constexpr (std::is_same_v<W, float>) {
    return round_to<S>(x);
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  } else if constexpr (std::is_same_v<S, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    return V(_mm512_cvtps_pd(_mm512_cvtpd_ps(x)));
#else
    return V(_mm256_cvtps_pd(_mm256_cvtpd_ps(x)));
#endif
#endif
  } else {
    // GCC 12's SLP vectorizer at -O3 drops a double -> float -> double round trip in registers
    // (as `v = double(float(v))` over an array): the narrowed values go through memory it must
    // read back.
    alignas(64) W values[V::size()];
    S stored[V::size()];
    x.store(values);
    for (int l = 0; l < V::size(); ++l) stored[l] = static_cast<S>(values[l]);
#if defined(__GNUC__)
    asm volatile("" : : "r"(stored) : "memory");
#endif
    for (int l = 0; l < V::size(); ++l) values[l] = static_cast<W>(stored[l]);
    return V::loadu(values);
  }
}

// `x` widened to double, as Vectorized<double> pieces in lane order.
template <typename V>
HOLOCRON_KERNEL_INLINE auto widen(const V& x) {
  using D = Vectorized<double>;
  constexpr int kPieces = V::size() / D::size();
  std::array<D, kPieces> out;
  if constexpr (std::is_same_v<typename V::value_type, double>) {
    out[0] = x;
#if defined(CPU_CAPABILITY_AVX512)
  } else if constexpr (kPieces == 2) {
    const __m512 v = x;
    out[0] = D(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    out[1] = D(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
#elif defined(CPU_CAPABILITY_AVX2)
  } else if constexpr (kPieces == 2) {
    const __m256 v = x;
    out[0] = D(_mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    out[1] = D(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
#endif
  } else {
    alignas(64) typename V::value_type narrow[V::size()];
    alignas(64) double wide[V::size()];
    x.store(narrow);
    for (int64_t l = 0; l < V::size(); ++l) wide[l] = static_cast<double>(narrow[l]);
    for (int k = 0; k < kPieces; ++k) out[k] = D::loadu(wide + k * D::size());
  }
  return out;
}

// Deterministic per-chunk sums: kLanes partial sums per reduction, held in
// registers in type S (the math type, or double where a pass needs it); element
// i of a tensor goes to lane i % kLanes, and at the end of a chunk the lanes
// are added in order, in double. (A lane sums at most kChunk / kLanes = 1024
// terms, so float lanes keep about 6 significant digits in the worst case, as
// ATen's float norms do.)
template <int R, typename S>
struct Acc {
  static_assert(R >= 1 && R <= kMaxSums);
  using A = Vectorized<S>;
  static_assert(kLanes % A::size() == 0, "a vector must not straddle the lane cycle");
  A lanes[R][kLanes / A::size()];

  Acc() {
    for (auto& row : lanes) {
      for (auto& lane : row) lane = A(S(0));
    }
  }
  double total(int r) const {
    alignas(64) S values[kLanes];
    for (int k = 0; k < kLanes / A::size(); ++k) lanes[r][k].store(values + k * A::size());
    double sum = 0.0;
    for (int l = 0; l < kLanes; ++l) sum += static_cast<double>(values[l]);
    return sum;
  }
};

// What a pass body sees of the sums: the vector (of math type W) at lane
// offset kOffset (a compile-time constant, so the lanes stay in registers)
// holding `count` valid elements, summed in type S.
template <int R, typename W, typename S, int kOffset>
struct LaneView {
  using V = Vectorized<W>;
  Acc<R, S>& acc;
  int64_t count;

  HOLOCRON_KERNEL_INLINE void add(int r, const V& x) {
    accumulate(r, valid(x), valid(x), [](const auto& a, const auto&) { return a; });
  }
  HOLOCRON_KERNEL_INLINE void add_square(int r, const V& x) {
    accumulate(r, valid(x), valid(x), [](const auto& a, const auto& b) { return a * b; });
  }
  HOLOCRON_KERNEL_INLINE void add_product(int r, const V& x, const V& y) {
    accumulate(r, valid(x), valid(y), [](const auto& a, const auto& b) { return a * b; });
  }
  // Adds the elements that are numbers to sum `r` and counts them in `r_count`.
  HOLOCRON_KERNEL_INLINE void add_numbers(int r, int r_count, const V& x) {
    const V is_number = x == x;
    add(r, V::blendv(V(0), x, is_number));
    add(r_count, V::blendv(V(0), V(1), is_number));
  }

 private:
  HOLOCRON_KERNEL_INLINE V valid(const V& x) const {
    return count == V::size() ? x : V::set(V(0), x, count);
  }
  template <typename F>
  HOLOCRON_KERNEL_INLINE void accumulate(int r, const V& x, const V& y, F f) {
    if constexpr (std::is_same_v<S, W>) {
      auto& lane = acc.lanes[r][kOffset / V::size()];
      lane = lane + f(x, y);
    } else {
      static_assert(std::is_same_v<S, double>);
      const auto a = widen(x);
      const auto b = widen(y);
      for (size_t k = 0; k < a.size(); ++k) {
        auto& lane = acc.lanes[r][kOffset / Vectorized<double>::size() + k];
        lane = lane + f(a[k], b[k]);
      }
    }
  }
};

// The type a pass sums in: its `sum_t` if it names one, else its math type.
template <typename P, typename = void>
struct SumType {
  using type = opmath_t<typename P::scalar_t>;
};
template <typename P>
struct SumType<P, std::void_t<typename P::sum_t>> {
  using type = typename P::sum_t;
};

// The pass's state dtype and state arrays: its own (state_t, kState), or the parameter's dtype
// and none for passes that do not declare them.
template <typename P, typename = void>
struct StateOf {
  using type = typename P::scalar_t;
  static constexpr unsigned kArrays = 0;
};
template <typename P>
struct StateOf<P, std::void_t<typename P::state_t>> {
  using type = typename P::state_t;
  static constexpr unsigned kArrays = P::kState;
};

// The pass's gradient array, or -1 for passes that read none.
template <typename P, typename = void>
struct GradArray : std::integral_constant<int, -1> {};
template <typename P>
struct GradArray<P, std::void_t<decltype(P::kGrad)>> : std::integral_constant<int, P::kGrad> {};

// The pass's weights array (its kParam; -1 where it reads none), or -1 for a pass that does not
// say: run_pass requires every pass reading a gradient to say.
template <typename P, typename = void>
struct ParamArray : std::integral_constant<int, -1> {
  static constexpr bool kDeclared = false;
};
template <typename P>
struct ParamArray<P, std::void_t<decltype(P::kParam)>> : std::integral_constant<int, P::kParam> {
  static constexpr bool kDeclared = true;
};

template <typename F, int... I>
HOLOCRON_KERNEL_INLINE void static_for_impl(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
// f(std::integral_constant<int, 0>{}) ... f(std::integral_constant<int, N - 1>{}).
template <int N, typename F>
HOLOCRON_KERNEL_INLINE void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// Every narrow array but the parameter and its gradient: an algorithm pass's state (kState).
constexpr unsigned state_arrays(int narrow, int param, int grad) {
  return ((1u << narrow) - 1u) & ~(1u << param) & ~(1u << grad);
}

// 8-bit state (Blockwise8): elements [first, first + n) of a tensor's state array j, n <= kBlock
// from a block's start, decoded into `out` (codes: map value * the block's scale, in float; else
// float32 values). The vector paths compute what the scalar one does, operation for operation.
inline void stage_in(const TensorSlot& slot, int j, int64_t first, int64_t n, float* out) {
  const auto& blockwise = slot.blockwise[j];
  if (blockwise.map == nullptr) {
    std::copy_n(static_cast<const float*>(slot.data[j]) + first, n, out);
    return;
  }
  const uint8_t* codes = static_cast<const uint8_t*>(slot.data[j]) + first;
  const float* table = blockwise.map->values;
  const float scale = blockwise.absmax[first / kBlock];
  int64_t e = 0;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 scales = _mm512_set1_ps(scale);
  for (; e + 16 <= n; e += 16) {
    const __m512i index = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + e)));
    _mm512_storeu_ps(out + e, _mm512_mul_ps(_mm512_i32gather_ps(index, table, 4), scales));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 scales = _mm256_set1_ps(scale);
  for (; e + 8 <= n; e += 8) {
    const __m256i index = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + e)));
    _mm256_storeu_ps(out + e, _mm256_mul_ps(_mm256_i32gather_ps(table, index, 4), scales));
  }
#endif
  for (; e < n; ++e) out[e] = table[codes[e]] * scale;
}

// ... and stored back: the block's largest magnitude is its scale, each value divided by it (in
// float) is encoded (blockwise::encode: a bucket from the top 16 bits, one comparison); a block
// holding an inf or a NaN gets a NaN scale and the code of 0.
inline void stage_out(const TensorSlot& slot, int j, int64_t first, int64_t n, const float* in) {
  const auto& blockwise = slot.blockwise[j];
  if (blockwise.map == nullptr) {
    std::copy_n(in, n, static_cast<float*>(slot.data[j]) + first);
    return;
  }
  float largest = 0.0f;
  bool finite = true;
  int64_t e = 0;
#if defined(CPU_CAPABILITY_AVX512)
  {
    const __m512i exponent = _mm512_set1_epi32(0x7F800000);
    __m512 widest = _mm512_setzero_ps();
    __mmask16 special = 0;
    for (; e + 16 <= n; e += 16) {
      const __m512 x = _mm512_loadu_ps(in + e);
      widest = _mm512_max_ps(widest, _mm512_abs_ps(x));
      special |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(x), exponent), exponent);
    }
    largest = _mm512_reduce_max_ps(widest);
    finite = special == 0;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  {
    const __m256i exponent = _mm256_set1_epi32(0x7F800000);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 widest = _mm256_setzero_ps();
    __m256i special = _mm256_setzero_si256();
    for (; e + 8 <= n; e += 8) {
      const __m256 x = _mm256_loadu_ps(in + e);
      widest = _mm256_max_ps(widest, _mm256_andnot_ps(sign, x));
      special = _mm256_or_si256(special,
                                _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(x), exponent), exponent));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, widest);
    for (float lane : lanes) largest = std::max(largest, lane);
    finite = _mm256_testz_si256(special, special) != 0;
  }
#endif
  for (; e < n; ++e) {
    finite = finite && std::isfinite(in[e]);
    largest = std::max(largest, std::fabs(in[e]));
  }
  uint8_t* codes = static_cast<uint8_t*>(slot.data[j]) + first;
  const QuantizationMap& map = *blockwise.map;
  if (!finite) {
    blockwise.absmax[first / kBlock] = std::numeric_limits<float>::quiet_NaN();
    std::fill_n(codes, n, map.zero_code);
    return;
  }
  blockwise.absmax[first / kBlock] = largest;
  const float divisor = largest > 0.0f ? largest : 1.0f;
  e = 0;
#if defined(CPU_CAPABILITY_AVX512)
  {
    // blockwise::encode, 16 lanes at a time, without its division and with one gather
    // (QuantizationMap::packed). The product with the scale's inverse is within one ulp of the
    // quotient, so it picks the same code except within 2 of a threshold's key or of a bucket's
    // edges, where a vector takes the exact path; the block's largest magnitude is exactly +-1.
    const __m512 divisors = _mm512_set1_ps(divisor);
    const __m512 inverse = _mm512_set1_ps(1.0f / divisor);
    // A block of zeros has no largest magnitude to map to +-1 (its values code as 0).
    const __m512 widest = _mm512_set1_ps(largest > 0.0f ? largest : std::numeric_limits<float>::quiet_NaN());
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    const __m512i low = _mm512_set1_epi32(static_cast<int>(blockwise::kFirstBucketBits));
    const __m512i high = _mm512_set1_epi32(0x3F80);
    const __m512i buckets = _mm512_set1_epi32(static_cast<int>(blockwise::kBuckets));
    const __m512i magnitude_bits = _mm512_set1_epi32(0x7FFF);
    const __m512i low_bits = _mm512_set1_epi32(0xFFFF);
    const __m512i byte = _mm512_set1_epi32(0xFF);
    const __m512i margin = _mm512_set1_epi32(2);
    const __m512i edge = _mm512_set1_epi32(0xFFFF - 2);
    const __m512i next = _mm512_set1_epi32(1);
    const __m512i zero_code = _mm512_set1_epi32(map.zero_code);
    auto bucket_of = [&](__m512i top) {
      const __m512i magnitude =
          _mm512_min_epu32(_mm512_max_epu32(_mm512_and_si512(top, magnitude_bits), low), high);
      return _mm512_add_epi32(_mm512_mullo_epi32(_mm512_srli_epi32(top, 15), buckets), _mm512_sub_epi32(magnitude, low));
    };
    // blockwise::encode as written: the quotient, the bucket's first code, its threshold.
    auto exact = [&](__m512 x) {
      const __m512 y = _mm512_div_ps(x, divisors);
      const __m512i first_code = _mm512_and_si512(
          _mm512_i32gather_epi32(bucket_of(_mm512_srli_epi32(_mm512_castps_si512(y), 16)),
                                 reinterpret_cast<const int*>(map.first_code), 1), byte);
      const __mmask16 above =
          _mm512_cmp_ps_mask(y, _mm512_i32gather_ps(first_code, map.thresholds, 4), _CMP_GE_OQ);
      return std::pair{y, _mm512_mask_add_epi32(first_code, above, first_code, next)};
    };
    for (; e + 16 <= n; e += 16) {
      const __m512 x = _mm512_loadu_ps(in + e);
      const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), sign_bit);
      const __mmask16 widest_lanes = _mm512_cmp_ps_mask(_mm512_abs_ps(x), widest, _CMP_EQ_OQ);
      __m512 y = _mm512_mask_mov_ps(_mm512_mul_ps(x, inverse), widest_lanes,
                                    _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(one), sign)));
      const __m512i bits = _mm512_castps_si512(y);
      const __m512i top = _mm512_srli_epi32(bits, 16);
      const __m512i packed = _mm512_i32gather_epi32(bucket_of(top), reinterpret_cast<const int*>(map.packed), 4);
      const __m512i key = _mm512_srli_epi32(packed, 8);
      const __m512i low_half = _mm512_and_si512(bits, low_bits);
      const __m512i value_key = _mm512_xor_si512(low_half, _mm512_and_si512(_mm512_srai_epi32(bits, 31), low_bits));
      // A magnitude below bucket 0's shares its code (that of 0), whatever its low bits.
      const __mmask16 below = _mm512_cmplt_epu32_mask(_mm512_and_si512(top, magnitude_bits), low);
      const __mmask16 above = _mm512_mask_cmpge_epu32_mask(static_cast<__mmask16>(~below), value_key, key);
      __m512i code = _mm512_mask_add_epi32(_mm512_and_si512(packed, byte), above, _mm512_and_si512(packed, byte), next);
      const __mmask16 near_threshold =
          _mm512_cmple_epu32_mask(_mm512_abs_epi32(_mm512_sub_epi32(value_key, key)), margin);
      const __mmask16 near_edge = _mm512_cmple_epu32_mask(low_half, margin) | _mm512_cmpge_epu32_mask(low_half, edge);
      if (static_cast<__mmask16>((near_threshold | near_edge) & ~widest_lanes) != 0) {
        std::tie(y, code) = exact(x);
      }
      if (map.keeps_positive) {
        const __mmask16 lifted = _mm512_cmpeq_epi32_mask(code, zero_code) &
                                 _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ);
        code = _mm512_mask_add_epi32(code, lifted, code, next);
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + e), _mm512_cvtepi32_epi8(code));
    }
  }
#elif defined(CPU_CAPABILITY_AVX2)
  {
    // As the AVX-512 encoder above, 8 lanes at a time (keys and magnitudes fit signed compares).
    const __m256 divisors = _mm256_set1_ps(divisor);
    const __m256 inverse = _mm256_set1_ps(1.0f / divisor);
    const __m256 widest = _mm256_set1_ps(largest > 0.0f ? largest : std::numeric_limits<float>::quiet_NaN());
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256i low = _mm256_set1_epi32(static_cast<int>(blockwise::kFirstBucketBits));
    const __m256i high = _mm256_set1_epi32(0x3F80);
    const __m256i buckets = _mm256_set1_epi32(static_cast<int>(blockwise::kBuckets));
    const __m256i magnitude_bits = _mm256_set1_epi32(0x7FFF);
    const __m256i low_bits = _mm256_set1_epi32(0xFFFF);
    const __m256i byte = _mm256_set1_epi32(0xFF);
    const __m256i beyond_margin = _mm256_set1_epi32(3);
    const __m256i edge = _mm256_set1_epi32(0xFFFF - 3);
    const __m256i zero_code = _mm256_set1_epi32(map.zero_code);
    auto bucket_of = [&](__m256i top) {
      const __m256i magnitude =
          _mm256_min_epu32(_mm256_max_epu32(_mm256_and_si256(top, magnitude_bits), low), high);
      return _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(top, 15), buckets), _mm256_sub_epi32(magnitude, low));
    };
    auto exact = [&](__m256 x) {
      const __m256 y = _mm256_div_ps(x, divisors);
      const __m256i first_code = _mm256_and_si256(
          _mm256_i32gather_epi32(reinterpret_cast<const int*>(map.first_code),
                                 bucket_of(_mm256_srli_epi32(_mm256_castps_si256(y), 16)), 1), byte);
      const __m256 above = _mm256_cmp_ps(y, _mm256_i32gather_ps(map.thresholds, first_code, 4), _CMP_GE_OQ);
      // `above` is all ones (-1 as an integer) where the value reaches the next code.
      return std::pair{y, _mm256_sub_epi32(first_code, _mm256_castps_si256(above))};
    };
    for (; e + 8 <= n; e += 8) {
      const __m256 x = _mm256_loadu_ps(in + e);
      const __m256 widest_lanes = _mm256_cmp_ps(_mm256_andnot_ps(sign_mask, x), widest, _CMP_EQ_OQ);
      __m256 y = _mm256_blendv_ps(_mm256_mul_ps(x, inverse), _mm256_or_ps(one, _mm256_and_ps(sign_mask, x)),
                                  widest_lanes);
      const __m256i bits = _mm256_castps_si256(y);
      const __m256i top = _mm256_srli_epi32(bits, 16);
      const __m256i packed =
          _mm256_i32gather_epi32(reinterpret_cast<const int*>(map.packed), bucket_of(top), 4);
      const __m256i key = _mm256_srli_epi32(packed, 8);
      const __m256i low_half = _mm256_and_si256(bits, low_bits);
      const __m256i value_key = _mm256_xor_si256(low_half, _mm256_and_si256(_mm256_srai_epi32(bits, 31), low_bits));
      const __m256i below = _mm256_cmpgt_epi32(low, _mm256_and_si256(top, magnitude_bits));
      const __m256i above = _mm256_andnot_si256(below, _mm256_cmpgt_epi32(_mm256_add_epi32(value_key, _mm256_set1_epi32(1)), key));
      __m256i code = _mm256_sub_epi32(_mm256_and_si256(packed, byte), above);
      const __m256i near = _mm256_or_si256(
          _mm256_cmpgt_epi32(beyond_margin, _mm256_abs_epi32(_mm256_sub_epi32(value_key, key))),
          _mm256_or_si256(_mm256_cmpgt_epi32(beyond_margin, low_half), _mm256_cmpgt_epi32(low_half, edge)));
      const __m256i refine = _mm256_andnot_si256(_mm256_castps_si256(widest_lanes), near);
      if (!_mm256_testz_si256(refine, refine)) std::tie(y, code) = exact(x);
      if (map.keeps_positive) {
        const __m256i lifted = _mm256_and_si256(_mm256_cmpeq_epi32(code, zero_code),
                                                _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ)));
        code = _mm256_sub_epi32(code, lifted);
      }
      const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + e), _mm_packus_epi16(words, words));
    }
  }
#endif
  for (; e < n; ++e) codes[e] = blockwise::encode(map, in[e] / divisor);
}

// Below this many elements a group runs on the calling thread: a parallel
// region costs more than it saves.
constexpr int64_t kMinParallelElements = int64_t{1} << 15;

constexpr bool holds_slot(unsigned set, int slot) { return slot >= 0 && ((set >> slot) & 1u) != 0; }

// The tensor holding chunk c: the last t with first_chunk[t] <= c.
inline int64_t tensor_of_chunk(const int64_t* first_chunk, int64_t num_tensors, int64_t c) {
  int64_t t = 0;
  for (int64_t step = num_tensors; step > 0; step /= 2) {
    while (t + step < num_tensors && first_chunk[t + step] <= c) t += step;
  }
  return t;
}

// Pass P over one chunk of a tensor at a time: what run_pass and run_pair share.
template <typename P>
class PassRunner {
 public:
  using T = typename P::scalar_t;
  using W = opmath_t<T>;
  using V = Vectorized<W>;
  using Narrow = NarrowIo<T>;
  using Wide = WideIo<T>;
  static constexpr int kN = P::kNarrow;
  static constexpr int kA = P::kNarrow + P::kWide;
  static constexpr int kPack = Narrow::kPack;
  static constexpr int kR = P::kSums;
  static_assert(kA <= kMaxArrays);

  using Stored = typename StateOf<P>::type;
  using State = StateIo<T, Stored>;
  static constexpr unsigned kState = std::is_same_v<Stored, T> ? 0u : StateOf<P>::kArrays;
  static constexpr bool kBlockwise = std::is_same_v<Stored, Blockwise8>;
  static_assert(!kBlockwise || std::is_same_v<W, float>, "8-bit state is built for float math only");
  static constexpr int kG = GradArray<P>::value;
  static_assert(kG < 0 || !((kState >> kG) & 1u), "the gradient is not state");
  static_assert(kG < kN, "the gradient is an array of the parameter's dtype");
  // Kahan-compensated weights (TensorSlot::compensation): the weight is read as p + c in the math
  // type, and a pass that writes it stores p = the weight rounded to T, c = what that dropped
  // (exact in the math type, then rounded to T), so updates below p's ulp accumulate in c.
  static constexpr int kP = ParamArray<P>::value;
  static_assert(kG < 0 || ParamArray<P>::kDeclared, "a pass reading a gradient names its weights (kParam)");
  static constexpr bool kCompensates =
      is_reduced_v<T> && kP < kN && holds_slot(P::kRead, kP) && !holds_slot(kState, kP);
  static constexpr bool kWritesWeights = kCompensates && holds_slot(P::kWrite, kP);

  PassRunner(const Group& group, const PassArgs& args)
      : group_(group),
        pass_{args},
        unscale_(kG >= 0 && args.inv_grad_scale != 1.0),
        inv_grad_scale_(static_cast<typename V::value_type>(args.inv_grad_scale)) {}

  // Chunks [chunk_begin, chunk_end) of the group (tensor t's start at first_chunk[t]); a reducing
  // pass leaves chunk c's sums in partials[c * kSums, ...). `split_only`: only the chunks of
  // tensors of more than one. Never inlined, with every lambda of its element loop forced inline:
  // left to GCC's heuristics, a pass called from two places (run_pair) kept a lambda out of line
  // or a sum in memory, at 1.2-2.3x the time.
  C10_NOINLINE void chunks(int64_t chunk_begin, int64_t chunk_end, const int64_t* first_chunk, int64_t num_tensors,
                           [[maybe_unused]] double* partials, bool split_only) const {
    const P& pass = pass_;
    const bool unscale = unscale_;
    const V inv_grad_scale = inv_grad_scale_;
    int64_t t = tensor_of_chunk(first_chunk, num_tensors, chunk_begin);
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      while (c >= first_chunk[t + 1]) ++t;
      if (split_only && first_chunk[t + 1] - first_chunk[t] == 1) continue;
      const TensorSlot& slot = group_.tensors[t];
      const int64_t begin = (c - first_chunk[t]) * kChunk;
      const int64_t end = std::min(begin + kChunk, slot.numel);
      const auto body = pass.for_tensor(t);
      T* const compensation = kCompensates && slot.data[kP < 0 ? 0 : kP] != nullptr
                                  ? static_cast<T*>(slot.compensation) : nullptr;
      using S = typename SumType<P>::type;
      Acc<kR == 0 ? 1 : kR, S> acc;
      // 8-bit state: the block in progress, its state arrays staged in the math type.
      [[maybe_unused]] alignas(64) W staged[kBlockwise ? kA : 1][kBlockwise ? kBlock : 1];
      [[maybe_unused]] int64_t block_begin = 0;
      // Enough iterations per round that every vector's lane offset is a
      // compile-time constant.
      constexpr int kRound = Narrow::kStep >= kLanes ? 1 : kLanes / Narrow::kStep;
      auto iterate = [&](int64_t from, int64_t to) HOLOCRON_LAMBDA_INLINE {
        for (int64_t round = from; round < to; round += kRound * Narrow::kStep) {
          static_for<kRound>([&](auto sub) HOLOCRON_LAMBDA_INLINE {
            const int64_t i = round + decltype(sub)::value * Narrow::kStep;
            if (i >= to) return;
            const int64_t count = std::min<int64_t>(Narrow::kStep, to - i);
            // Each vector is assigned once below, loaded or zero. Vectorized's constructor zeroes
            // it, which made `V values[kA][kPack]` a memset of the whole array every iteration that
            // also kept it in memory: the union skips the constructors (AdaBelief's float32 step in
            // cache went from 2.6 to 1.0 ns an element on an AVX2 AMD EPYC).
            union Unconstructed {
              V v[kA][kPack];
              Unconstructed() {}
            } storage;
            auto& values = storage.v;
            static_for<kA>([&](auto j_) HOLOCRON_LAMBDA_INLINE {
              constexpr int j = decltype(j_)::value;
              // An absent array (amsgrad off, no momentum) is neither read nor written.
              if (!((P::kRead >> j) & 1u) || slot.data[j] == nullptr) {
                for (int k = 0; k < kPack; ++k) values[j][k] = V(W(0));
                return;
              }
              constexpr bool kIsState = (kState >> j) & 1u;
              if constexpr (kBlockwise && kIsState) Wide::load(staged[j] + (i - block_begin), count, values[j]);
              else if constexpr (kIsState) State::load(static_cast<const Stored*>(slot.data[j]) + i, count, values[j]);
              else if constexpr (j < kN) Narrow::load(static_cast<const T*>(slot.data[j]) + i, count, values[j]);
              else Wide::load(static_cast<const W*>(slot.data[j]) + i, count, values[j]);
            });
            [[maybe_unused]] V compensated[kPack];
            if constexpr (kCompensates) {
              if (compensation != nullptr) {
                Narrow::load(compensation + i, count, compensated);
                for (int k = 0; k < kPack; ++k) values[kP][k] = values[kP][k] + compensated[k];
              }
            }
            if constexpr (kG >= 0) {
              if (unscale) {
                for (int k = 0; k < kPack; ++k) values[kG][k] = values[kG][k] * inv_grad_scale;
              }
            }
            static_for<kPack>([&](auto k_) HOLOCRON_LAMBDA_INLINE {
              constexpr int k = decltype(k_)::value;
              constexpr int kOffset = (decltype(sub)::value * Narrow::kStep + k * V::size()) % kLanes;
              V x[kA];
              for (int j = 0; j < kA; ++j) x[j] = values[j][k];
              LaneView<kR == 0 ? 1 : kR, W, S, kOffset> lanes{acc, std::clamp<int64_t>(count - k * V::size(), 0, V::size())};
              body(x, lanes);
              for (int j = 0; j < kA; ++j) values[j][k] = x[j];
            });
            if constexpr (kWritesWeights) {
              if (compensation != nullptr) {
                // The weight rounded once: stored as it is (the loop below skips it), and read back
                // exactly to take the residue. Conversions, not bytes, bound reduced-precision passes.
                static_assert(kPack == 2, "a reduced type's iteration is two float vectors");
                const auto rounded = at::vec::convert_from_float<T>(values[kP][0], values[kP][1]);
                const auto [low, high] = at::vec::convert_to_float<T>(rounded);
                compensated[0] = values[kP][0] - low;
                compensated[1] = values[kP][1] - high;
                T* const weights = static_cast<T*>(slot.data[kP]) + i;
                if (count == Narrow::kStep) rounded.store(weights); else rounded.store(weights, count);
                Narrow::store(compensation + i, count, compensated);
              }
            }
            static_for<kA>([&](auto j_) HOLOCRON_LAMBDA_INLINE {
              constexpr int j = decltype(j_)::value;
              if (!((P::kWrite >> j) & 1u) || slot.data[j] == nullptr) return;
              if constexpr (kWritesWeights && j == kP) {
                if (compensation != nullptr) return;  // stored with its compensation above
              }
              constexpr bool kIsState = (kState >> j) & 1u;
              if constexpr (kBlockwise && kIsState) Wide::store(staged[j] + (i - block_begin), count, values[j]);
              else if constexpr (kIsState) State::store(static_cast<Stored*>(slot.data[j]) + i, count, values[j]);
              else if constexpr (j < kN) Narrow::store(static_cast<T*>(slot.data[j]) + i, count, values[j]);
              else Wide::store(static_cast<W*>(slot.data[j]) + i, count, values[j]);
            });
          });
        }
      };
      if constexpr (kBlockwise) {
        for (block_begin = begin; block_begin < end; block_begin += kBlock) {
          const int64_t n = std::min(kBlock, end - block_begin);
          static_for<kA>([&](auto j_) HOLOCRON_LAMBDA_INLINE {
            constexpr int j = decltype(j_)::value;
            if constexpr ((kState >> j) & 1u) {
              if (((P::kRead >> j) & 1u) && slot.data[j] != nullptr) stage_in(slot, j, block_begin, n, staged[j]);
            }
          });
          iterate(block_begin, block_begin + n);
          static_for<kA>([&](auto j_) HOLOCRON_LAMBDA_INLINE {
            constexpr int j = decltype(j_)::value;
            if constexpr ((kState >> j) & 1u) {
              if (((P::kWrite >> j) & 1u) && slot.data[j] != nullptr) stage_out(slot, j, block_begin, n, staged[j]);
            }
          });
        }
      } else {
        iterate(begin, end);
      }
      if constexpr (kR > 0) {
        for (int r = 0; r < kR; ++r) partials[c * kR + r] = acc.total(r);
      }
    }
  }

 private:
  const Group& group_;
  const P pass_;
  const bool unscale_;
  const V inv_grad_scale_;
};

// Runs `chunks(begin, end)` over [0, num_chunks) in one parallel region, or on the calling thread
// where the group is small or this is already inside a region.
template <typename F>
void for_chunks(const Group& group, int64_t num_chunks, const F& chunks) {
  int64_t elements = 0;
  for (const auto& slot : group.tensors) elements += slot.numel;
  if (elements < kMinParallelElements || at::in_parallel_region()) {
    chunks(int64_t{0}, num_chunks);
  } else {
    at::parallel_for(0, num_chunks, 1, chunks);
  }
}

template <typename P>
void run_pass(const Group& group, const PassArgs& args, Sums* sums) {
  constexpr int kR = P::kSums;
  const PassRunner<P> runner(group, args);
  const int64_t num_tensors = static_cast<int64_t>(group.tensors.size());
  auto& ws = prepare_workspace(group, kR);
  const int64_t* first_chunk = ws.first_chunk.data();
  double* partials = ws.partials.data();
  for_chunks(group, first_chunk[num_tensors], [&](int64_t chunk_begin, int64_t chunk_end) {
    runner.chunks(chunk_begin, chunk_end, first_chunk, num_tensors, partials, false);
  });

  if constexpr (kR > 0) {
    reset_sums(*sums, num_tensors);
    for (int64_t t = 0; t < num_tensors; ++t) {
      auto& row = (*sums)[t];
      for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
        for (int r = 0; r < kR; ++r) row[r] += partials[c * kR + r];
      }
    }
  }
}

// A reducing pass P1, the host phase of each tensor, then the pass P2 reading what it computed
// (pass.h, run_pair), with the same chunks and per-tensor sums as run_pass would give. A tensor
// of one chunk goes through all three while its arrays are in this core's cache: the gain on many
// small tensors, whose second pass otherwise reads them from memory again and starts each of its
// short streams cold. Larger tensors keep the two regions: their sums need all their chunks.
template <typename P1, typename P2>
void run_pair(const Group& first_group, const PassArgs& first_args, const Group& second_group,
              const PassArgs& second_args, Sums& sums, TensorPhase phase) {
  constexpr int kR = P1::kSums;
  static_assert(kR > 0, "the first pass of a pair reduces");
  static_assert(std::is_same_v<typename P1::scalar_t, typename P2::scalar_t>);
  const PassRunner<P1> first(first_group, first_args);
  const PassRunner<P2> second(second_group, second_args);
  const int64_t num_tensors = static_cast<int64_t>(first_group.tensors.size());
  auto& ws = prepare_workspace(first_group, kR);
  const int64_t* first_chunk = ws.first_chunk.data();
  double* partials = ws.partials.data();
  reset_sums(sums, num_tensors);
  const auto whole = [&](int64_t t) { return first_chunk[t + 1] - first_chunk[t] == 1; };
  bool any_split = false;
  for_chunks(first_group, first_chunk[num_tensors], [&](int64_t chunk_begin, int64_t chunk_end) {
    int64_t t = tensor_of_chunk(first_chunk, num_tensors, chunk_begin);
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      while (c >= first_chunk[t + 1]) ++t;
      first.chunks(c, c + 1, first_chunk, num_tensors, partials, false);
      if (!whole(t)) continue;
      auto& row = sums[t];
      for (int r = 0; r < kR; ++r) row[r] += partials[c * kR + r];  // onto 0, as run_pass sums its chunks
      phase(t, row);
      second.chunks(c, c + 1, first_chunk, num_tensors, nullptr, false);
    }
  });
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (whole(t)) continue;
    auto& row = sums[t];
    for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
      for (int r = 0; r < kR; ++r) row[r] += partials[c * kR + r];
    }
    phase(t, row);
    any_split = any_split || first_group.tensors[t].numel > 0;
  }
  if (!any_split) return;
  for_chunks(second_group, first_chunk[num_tensors], [&](int64_t chunk_begin, int64_t chunk_end) {
    second.chunks(chunk_begin, chunk_end, first_chunk, num_tensors, nullptr, true);
  });
}

// Fills `table[pass]` with P<float>, P<double>, P<BFloat16>, P<Half>, for state of the
// parameter's dtype.
template <template <typename> class P>
void register_pass(PassTable& table, Pass pass) {
  auto& row = table.passes[static_cast<size_t>(pass)];
  row[0][0] = &run_pass<P<float>>;
  row[1][0] = &run_pass<P<double>>;
  row[2][0] = &run_pass<P<c10::BFloat16>>;
  row[3][0] = &run_pass<P<c10::Half>>;
}

// The same for a pass with state arrays, P<T, S>: also for each parameter dtype T with float32
// and bfloat16 state S (state_slot's order), and, unless kBlockwise is false, with 8-bit state
// (Blockwise8) for every T but double.
template <template <typename, typename> class P, bool kBlockwise = true>
void register_pass(PassTable& table, Pass pass) {
  auto& row = table.passes[static_cast<size_t>(pass)];
  auto fill = [&](auto param, int d) {
    using T = decltype(param);
    row[d][0] = &run_pass<P<T, T>>;
    if constexpr (!std::is_same_v<T, float>) row[d][1] = &run_pass<P<T, float>>;
    if constexpr (!std::is_same_v<T, c10::BFloat16>) row[d][2] = &run_pass<P<T, c10::BFloat16>>;
    if constexpr (kBlockwise && !std::is_same_v<T, double>) row[d][3] = &run_pass<P<T, Blockwise8>>;
  };
  fill(float{}, 0);
  fill(double{}, 1);
  fill(c10::BFloat16{}, 2);
  fill(c10::Half{}, 3);
}

// Registers P1 and P2 (passes with state arrays) and, for state of the parameter's dtype,
// float32 or bfloat16, their pair for run_pair. 8-bit state runs as the two passes: a pair's
// build for it would add compile time on every instruction set for no gain measured yet. A P1
// that precedes several updates is registered once per pair, with the same kernels each time.
template <template <typename, typename> class P1, template <typename, typename> class P2>
void register_pair(PassTable& table, Pass first, Pass second) {
  register_pass<P1>(table, first);
  register_pass<P2>(table, second);
  table.first_of[static_cast<size_t>(second)] = first;
  auto& row = table.pairs[static_cast<size_t>(second)];
  auto fill = [&](auto param, int d) {
    using T = decltype(param);
    row[d][0] = &run_pair<P1<T, T>, P2<T, T>>;
    if constexpr (!std::is_same_v<T, float>) row[d][1] = &run_pair<P1<T, float>, P2<T, float>>;
    if constexpr (!std::is_same_v<T, c10::BFloat16>) row[d][2] = &run_pair<P1<T, c10::BFloat16>, P2<T, c10::BFloat16>>;
  };
  fill(float{}, 0);
  fill(double{}, 1);
  fill(c10::BFloat16{}, 2);
  fill(c10::Half{}, 3);
}

// Math helpers shared by the algorithms: V is Vectorized<float or double>.
template <typename V>
HOLOCRON_KERNEL_INLINE V splat(double value) {
  return V(static_cast<typename V::value_type>(value));
}

// g + wd * p, the L2 weight decay every algorithm applies (when wd != 0).
template <typename V>
HOLOCRON_KERNEL_INLINE V with_weight_decay(const V& g, const V& p, const V& weight_decay, bool decay) {
  return decay ? g + weight_decay * p : g;
}

// The Adam-style denominator sqrt(second or its running max)/sqrt(bc) + eps,
// the division by sqrt(bc) taken as a product with its inverse (a division
// per element costs more than the memory traffic in half precision); with
// amsgrad the running max `max_second` is advanced first.
template <typename V>
HOLOCRON_KERNEL_INLINE V adam_denominator(const V& second, V* max_second, const V& inv_sqrt_bias_correction,
                                          const V& eps) {
  V source = second;
  if (max_second != nullptr) {
    *max_second = at::vec::maximum(*max_second, second);
    source = *max_second;
  }
  return source.sqrt() * inv_sqrt_bias_correction + eps;
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu

// Each algorithm file registers its passes with this, once per instruction set.
#define HOLOCRON_KERNELS_REGISTER(name) \
  namespace holocron::optim::kernels::cpu { inline namespace CPU_CAPABILITY { void register_##name(PassTable& table); } }
