// One-row products for CPU decoding, each weight streamed once:
//   int8_gemv (lmforge.nn.int8_gemv): y[n] = s[n] * sum_k q[n, k] * x[k]
//     (Jacob et al. 2018, eq. 1, zero weight offset); q int8 [N, K], s fp32 [N];
//   dense_gemv (lmforge.nn.dense_gemv): y[n] = sum_k W[n, k] * x[k], W fp32 or bf16 [N, K]
//     (bf16: x rounded to bf16 first, products exact, sums in fp32).
// x fp32 [K] (or [1, K]) -> y fp32 [1, N] (or [N]), W row-major (the model's own [out, in]).
// Several weights sharing x (q/k/v, gate/up) go through one call, outputs concatenated.
// AVX-512 (runtime check) with 8 independent accumulators per row; AVX2 + FMA (the same
// loop on 8 lanes) where AVX-512 is missing; a portable loop elsewhere.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMF_X86 1
#endif

namespace {

inline float widen_any(int8_t w) { return static_cast<float>(w); }
inline float widen_any(float w) { return w; }
inline float widen_any(uint16_t w) {  // bf16: the top half of an fp32
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void rows_portable(const float* x, const int8_t* q, const float* s, float* y, int64_t K,
                   int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* w = q + r * K;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
      for (int j = 0; j < 8; ++j) acc[j] += static_cast<float>(w[k + j]) * x[k + j];
    float t = 0;
    for (; k < K; ++k) t += static_cast<float>(w[k]) * x[k];
    for (int j = 0; j < 8; ++j) t += acc[j];
    y[r] = t * s[r];
  }
}

#ifdef LMF_X86
#define LMF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

LMF_AVX512 inline __m512 widen16(__m128i codes) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
}

LMF_AVX512 inline __m512 load16(const int8_t* w) {
  return widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}
LMF_AVX512 inline __m512 load16(const int8_t* w, __mmask16 m) {
  return widen16(_mm_maskz_loadu_epi8(m, w));
}
LMF_AVX512 inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
LMF_AVX512 inline __m512 load16(const float* w, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, w);
}
LMF_AVX512 inline __m512 load16(const uint16_t* w) {  // bf16: the top half of an fp32
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
LMF_AVX512 inline __m512 load16(const uint16_t* w, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, w);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename W>
LMF_AVX512 inline __m512 fma16(const W* w, const float* x, __m512 acc) {
  return _mm512_fmadd_ps(load16(w), _mm512_loadu_ps(x), acc);
}

// sum_k w[k] x[k] of one row (int8 codes, fp32 or bf16 weights widened to fp32): one row at
// a time, 8 accumulators (128 weights per step). The weights are read as one sequential
// stream (interleaving 4 rows of 512 int8 codes, x loads shared, was 2x faster from L2 but
// 2-3x slower from memory: short per-row streams); 8 chains hide the FMA latency.
template <typename W>
LMF_AVX512 float row_dot(const float* x, const W* w, int64_t K) {
  // eight named accumulators: gcc spills an array of them to the stack
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
         a7 = a0;
  int64_t k = 0;
  for (; k + 128 <= K; k += 128) {
    if constexpr (std::is_same_v<W, int8_t>) {
      // int8: 4 KB ahead (past the row's end into the next rows: one stream). Without it
      // this loop (3 vector ops per 16 codes) outran the hardware prefetcher and was slower
      // than inductor's from memory (2-core Zen 4: 32 MB of codes 13-14 -> 17-19 GB/s; 30m
      // projections 2.7-3.5 -> 1.5-2.0 ms). fp32 / bf16: none — at one FMA per 64 B (32 B)
      // the hardware keeps up, and 512 B - 16 KB ahead were all slower (fp32, 30m, 1
      // thread: 5.2 ms without, 6.0 with 2-16 KB, 6.5-6.7 with 0.5-1 KB).
      _mm_prefetch(reinterpret_cast<const char*>(w + k + 4096), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + k + 4096 + 64), _MM_HINT_T0);
    }
    a0 = fma16(w + k, x + k, a0);
    a1 = fma16(w + k + 16, x + k + 16, a1);
    a2 = fma16(w + k + 32, x + k + 32, a2);
    a3 = fma16(w + k + 48, x + k + 48, a3);
    a4 = fma16(w + k + 64, x + k + 64, a4);
    a5 = fma16(w + k + 80, x + k + 80, a5);
    a6 = fma16(w + k + 96, x + k + 96, a6);
    a7 = fma16(w + k + 112, x + k + 112, a7);
  }
  for (; k < K; k += 16) {  // 16 weights at a time, masked
    const int64_t n = std::min<int64_t>(16, K - k);
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    a0 = _mm512_fmadd_ps(load16(w + k, m), _mm512_maskz_loadu_ps(m, x + k), a0);
  }
  a0 = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
  a4 = _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7));
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a4));
}

void rows_avx512(const float* x, const int8_t* q, const float* s, float* y, int64_t K,
                 int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) y[r] = s[r] * row_dot(x, q + r * K, K);
}

// int8 x int8 (activations quantised per call): x ~ s_x * xq, xq in [-127, 127]. VPDPBUSD
// multiplies u8 by s8 (4 products per int32 lane, 64 per instruction), so the codes are
// read as unsigned w + 128 (one XOR with 0x80 in a register) against the signed xq, and
// the offset is taken back once per call: sum_k w_k xq_k = sum_k (w_k + 128) xq_k -
// 128 sum_k xq_k. Per 64 codes: one load, one XOR, one VPDPBUSD; one reduction per row.
// No software prefetch here (unlike `row_dot` on int8, which widens 16 codes per FMA and needs
// it): 4 KB ahead made the compiled 30m int8 decode slower, 533-572 -> 648-650 tok/s
// without it (1 thread, 128 greedy tokens, two alternated process pairs, other core busy).
#define LMF_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

LMF_VNNI int32_t row_vnni(const int8_t* xs, const int8_t* w, int64_t K) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  for (; k + 256 <= K; k += 256) {
    const __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(w + k), flip);
    const __m512i w1 = _mm512_xor_si512(_mm512_loadu_si512(w + k + 64), flip);
    const __m512i w2 = _mm512_xor_si512(_mm512_loadu_si512(w + k + 128), flip);
    const __m512i w3 = _mm512_xor_si512(_mm512_loadu_si512(w + k + 192), flip);
    a0 = _mm512_dpbusd_epi32(a0, w0, _mm512_loadu_si512(xs + k));
    a1 = _mm512_dpbusd_epi32(a1, w1, _mm512_loadu_si512(xs + k + 64));
    a2 = _mm512_dpbusd_epi32(a2, w2, _mm512_loadu_si512(xs + k + 128));
    a3 = _mm512_dpbusd_epi32(a3, w3, _mm512_loadu_si512(xs + k + 192));
  }
  for (; k < K; k += 64) {  // 64 codes at a time; past K the masked codes read 0 (+128),
    const int64_t n = std::min<int64_t>(64, K - k);  // against xs padded with zeros
    const __mmask64 m = n == 64 ? ~__mmask64(0) : ((__mmask64(1) << n) - 1);
    const __m512i wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + k), flip);
    a0 = _mm512_dpbusd_epi32(a0, wv, _mm512_loadu_si512(xs + k));
  }
  return _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1),
                                                  _mm512_add_epi32(a2, a3)));
}

bool cpu_has_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

#ifdef LMF_X86
// AVX2 + FMA (CPUs without AVX-512: most laptops, Zen 1-3): `row_dot` on 8 lanes. Without it
// those CPUs ran `rows_portable`, whose int8 -> float conversion the compiler does not
// vectorise: 11.7 of 16.9 ms per 30m int8 decode token (AVX2-only EPYC, 1 thread).
#define LMF_AVX2 __attribute__((target("avx2,fma")))

LMF_AVX2 inline __m256 load8(const int8_t* w) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}
LMF_AVX2 inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
LMF_AVX2 inline __m256 load8(const uint16_t* w) {  // bf16: the top half of an fp32
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <typename W>
LMF_AVX2 inline __m256 fma8(const W* w, const float* x, __m256 acc) {
  return _mm256_fmadd_ps(load8(w), _mm256_loadu_ps(x), acc);
}

template <typename W>
LMF_AVX2 float row_dot8(const float* x, const W* w, int64_t K) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
         a7 = a0;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    if constexpr (std::is_same_v<W, int8_t>)  // one stream, 4 KB ahead (as `row_dot`)
      _mm_prefetch(reinterpret_cast<const char*>(w + k + 4096), _MM_HINT_T0);
    a0 = fma8(w + k, x + k, a0);
    a1 = fma8(w + k + 8, x + k + 8, a1);
    a2 = fma8(w + k + 16, x + k + 16, a2);
    a3 = fma8(w + k + 24, x + k + 24, a3);
    a4 = fma8(w + k + 32, x + k + 32, a4);
    a5 = fma8(w + k + 40, x + k + 40, a5);
    a6 = fma8(w + k + 48, x + k + 48, a6);
    a7 = fma8(w + k + 56, x + k + 56, a7);
  }
  for (; k + 8 <= K; k += 8) a0 = fma8(w + k, x + k, a0);
  a0 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  a4 = _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7));
  const __m256 v = _mm256_add_ps(a0, a4);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float t = _mm_cvtss_f32(h);
  for (; k < K; ++k) t += widen_any(w[k]) * x[k];
  return t;
}

void rows_avx2(const float* x, const int8_t* q, const float* s, float* y, int64_t K,
               int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) y[r] = s[r] * row_dot8(x, q + r * K, K);
}

template <typename W>
LMF_AVX2 void dense_rows_avx2(const float* x, const W* w, float* y, int64_t K, int64_t r0,
                              int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) y[r] = row_dot8(x, w + r * K, K);
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// int8 x int8 without VNNI (as llama.cpp's q8_0 dot on AVX2): VPMADDUBSW multiplies u8 by
// s8 and adds pairs into int16, so the sign moves onto the activations: |w| (as u8, at most
// 128) times sign(w) * xq, 2 * 128 * 127 < 2^15, no saturation; VPMADDWD by ones widens the
// pairs to int32. Per 32 codes: one load, two VPSIGNB, VPMADDUBSW, VPMADDWD, one add.
// A software prefetch 1 KB ahead (one line per 64 codes): over a 30m model's 31.6 MB of codes
// on the AVX2-only EPYC, 2.07 -> 1.77 ms per token (15 -> 18 GB/s; 4 KB ahead, `row_dot8`'s
// distance: 2.09 ms; 4 rows interleaved: 2.33 ms), a scratch
// C++ harness with the same loop, medians of 40 alternated passes, two 1-thread jobs beside.
LMF_AVX2 int32_t row_q8_avx2(const int8_t* xs, const int8_t* w, int64_t K) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a0 = _mm256_setzero_si256(), a1 = a0;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(w + k + 1024), _MM_HINT_T0);
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 32));
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + k));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + k + 32));
    const __m256i p0 = _mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
    const __m256i p1 = _mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1));
    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(p0, ones));
    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(p1, ones));
  }
  const __m256i v = _mm256_add_epi32(a0, a1);
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  int32_t t = _mm_cvtsi128_si32(h);
  for (; k < K; ++k) t += static_cast<int32_t>(w[k]) * xs[k];  // the row's tail: no overread
  return t;
}
#endif

// Dense rows (dense_gemv), fp32 or bf16 weights, fp32 activations and sums (`row_dot`); a
// bf16 weight is widened exactly (`widen_any`: its 16 bits are the top half of the fp32).

template <typename W>
void dense_rows_portable(const float* x, const W* w, float* y, int64_t K, int64_t r0,
                         int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const W* row = w + r * K;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
      for (int j = 0; j < 8; ++j) acc[j] += widen_any(row[k + j]) * x[k + j];
    float t = 0;
    for (; k < K; ++k) t += widen_any(row[k]) * x[k];
    for (int j = 0; j < 8; ++j) t += acc[j];
    y[r] = t;
  }
}

#ifdef LMF_X86
template <typename W>
LMF_AVX512 void dense_rows_avx512(const float* x, const W* w, float* y, int64_t K, int64_t r0,
                                  int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) y[r] = row_dot(x, w + r * K, K);
}
#endif

#ifdef LMF_X86
// bf16 weights on CPUs with AVX512_BF16 (Zen 4, Sapphire Rapids): VDPBF16PS multiplies 32
// bf16 pairs and adds them into 16 fp32 lanes, one instruction per 64 B of weights, against
// x rounded to bf16 once per call (exact when x comes from a bf16 model; a bf16 product is
// exact in fp32). `xs` is padded with zeros to a multiple of 32.
#define LMF_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

LMF_BF16 inline __m512 dot32(const uint16_t* w, const uint16_t* xs, __m512 acc) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w), (__m512bh)_mm512_loadu_si512(xs));
}

LMF_BF16 void bf16_rows_dp(const uint16_t* xs, const uint16_t* w, float* y, int64_t K,
                           int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 128 <= K; k += 128) {
      a0 = dot32(row + k, xs + k, a0);
      a1 = dot32(row + k + 32, xs + k + 32, a1);
      a2 = dot32(row + k + 64, xs + k + 64, a2);
      a3 = dot32(row + k + 96, xs + k + 96, a3);
    }
    for (; k < K; k += 32) {  // 32 weights at a time, masked (xs is zero past K)
      const int64_t n = std::min<int64_t>(32, K - k);
      const __mmask32 m = n == 32 ? ~__mmask32(0) : ((__mmask32(1) << n) - 1);
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_loadu_epi16(m, row + k),
                            (__m512bh)_mm512_loadu_si512(xs + k));
    }
    y[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}
#endif

#ifdef LMF_X86
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
#endif

using RowsFn = void (*)(const float*, const int8_t*, const float*, float*, int64_t, int64_t,
                        int64_t);

RowsFn pick(bool portable) {
#ifdef LMF_X86
  static const bool avx512 = cpu_has_avx512(), avx2 = cpu_has_avx2();
  if (avx512 && !portable) return rows_avx512;
  if (avx2 && !portable) return rows_avx2;
#endif
  return rows_portable;
}

// The weights sharing x (q/k/v, gate/up), checked, and where each one's outputs start.
// `ss` empty: dense weights without scales (dense_gemv).
struct Parts {
  std::vector<at::Tensor> q, s;
  std::vector<int64_t> start{0};
};

Parts check_parts(const at::Tensor& x, at::TensorList qs, at::TensorList ss,
                  at::ScalarType wtype) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "x must be CPU float32");
  TORCH_CHECK(x.dim() == 1 || (x.dim() == 2 && x.size(0) == 1), "x must be [K] or [1, K]");
  const bool scaled = wtype == at::kChar;
  TORCH_CHECK(!qs.empty() && (!scaled || qs.size() == ss.size()), "one scale per weight");
  const int64_t K = x.size(-1);
  Parts p;
  for (size_t i = 0; i < qs.size(); ++i) {
    TORCH_CHECK(qs[i].device().is_cpu() && qs[i].scalar_type() == wtype &&
                    qs[i].dim() == 2 && qs[i].size(1) == K,
                "weights must be CPU ",
                scaled ? "int8" : wtype == at::kFloat ? "float32" : "bfloat16",
                " [N, K] with K = ", K);
    if (scaled) {
      TORCH_CHECK(ss[i].scalar_type() == at::kFloat && ss[i].numel() == qs[i].size(0),
                  "scales must be float32 [N]");
      p.s.push_back(ss[i].contiguous());
    }
    p.q.push_back(qs[i].contiguous());
    p.start.push_back(p.start.back() + qs[i].size(0));
  }
  return p;
}

// Output rows per task: about 32 KB of weights (rows of `row_bytes`), a multiple of 4, ≥ 16.
int64_t grain_rows(int64_t row_bytes) {
  return std::max<int64_t>(16, (32768 / std::max<int64_t>(row_bytes, 1) + 3) / 4 * 4);
}

// y = [rows of part 0 | rows of part 1 | ...]; `rows(i, y_i, r0, r1)` computes rows
// [r0, r1) of part i into its outputs y_i; output rows are split over torch's intra-op
// threads, about `bytes_per_task` of weights per task.
template <typename Rows>
at::Tensor each_part(const at::Tensor& x, const Parts& p, int64_t row_bytes, Rows&& rows) {
  const int64_t N = p.start.back();
  at::Tensor y = at::empty({1, N}, x.options());
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, grain_rows(row_bytes), [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < p.q.size(); ++i) {
      const int64_t lo = std::max(begin, p.start[i]), hi = std::min(end, p.start[i + 1]);
      if (lo >= hi) continue;
      rows(i, yp + p.start[i], lo - p.start[i], hi - p.start[i]);
    }
  });
  return x.dim() == 1 ? y.view({N}) : y;
}

at::Tensor int8_gemv(const at::Tensor& x, at::TensorList qs, at::TensorList ss, bool portable) {
  const Parts p = check_parts(x, qs, ss, at::kChar);
  const int64_t K = x.size(-1);
  const at::Tensor xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  const RowsFn fn = pick(portable);
  return each_part(x, p, K, [&](size_t i, float* y, int64_t r0, int64_t r1) {
    fn(xp, p.q[i].data_ptr<int8_t>(), p.s[i].data_ptr<float>(), y, K, r0, r1);
  });
}

// y = [W_1 x | W_2 x | ...] for fp32 or bf16 W_i [N_i, K] (all of one dtype), fp32 x.
template <typename W>
at::Tensor dense_parts(const at::Tensor& x, const Parts& p, bool portable) {
  const int64_t K = x.size(-1);
  const at::Tensor xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  auto fn = dense_rows_portable<W>;
#ifdef LMF_X86
  static const bool avx512 = cpu_has_avx512(), avx2 = cpu_has_avx2();
  if (avx512 && !portable) fn = dense_rows_avx512<W>;
  else if (avx2 && !portable) fn = dense_rows_avx2<W>;
#endif
  return each_part(x, p, static_cast<int64_t>(sizeof(W)) * K,
                   [&](size_t i, float* y, int64_t r0, int64_t r1) {
                     fn(xp, static_cast<const W*>(p.q[i].data_ptr()), y, K, r0, r1);
                   });
}

// bf16 weights with AVX512_BF16: x rounded to bf16 once (round to nearest even), then
// `bf16_rows_dp`.
at::Tensor bf16_parts_dp(const at::Tensor& x, const Parts& p) {
  const int64_t K = x.size(-1);
  const at::Tensor xb = x.contiguous().to(at::kBFloat16);
  std::vector<uint16_t> xs(static_cast<size_t>((K + 31) / 32 * 32), 0);
  std::memcpy(xs.data(), xb.data_ptr(), static_cast<size_t>(K) * sizeof(uint16_t));
  return each_part(x, p, 2 * K, [&](size_t i, float* y, int64_t r0, int64_t r1) {
#ifdef LMF_X86
    bf16_rows_dp(xs.data(), static_cast<const uint16_t*>(p.q[i].data_ptr()), y, K, r0, r1);
#endif
  });
}

at::Tensor dense_gemv(const at::Tensor& x, at::TensorList ws, bool portable) {
  TORCH_CHECK(!ws.empty(), "dense_gemv needs at least one weight");
  const at::ScalarType wtype = ws[0].scalar_type();
  TORCH_CHECK(wtype == at::kFloat || wtype == at::kBFloat16,
              "dense_gemv weights must be float32 or bfloat16, not ", wtype);
  const Parts p = check_parts(x, ws, {}, wtype);
  if (wtype == at::kFloat) return dense_parts<float>(x, p, portable);
  // bf16 weights: x rounded to bf16 on every path (as a bf16 F.linear does), so that the
  // result does not depend on the CPU
#ifdef LMF_X86
  static const bool dp = cpu_has_avx512_bf16();
  if (dp && !portable) return bf16_parts_dp(x, p);
#endif
  return dense_parts<uint16_t>(x.to(at::kBFloat16).to(at::kFloat), p, portable);
}

// x quantised once per call: s_x = max|x| / 127, xs = round(x / s_x), padded with zeros
// to a multiple of 64 (+ 64), and its sum for the offset of `row_vnni`.
at::Tensor int8_gemv_q8(const at::Tensor& x, at::TensorList qs, at::TensorList ss) {
  const Parts p = check_parts(x, qs, ss, at::kChar);
#ifdef LMF_X86
  static const bool vnni = cpu_has_vnni(), avx2 = cpu_has_avx2();
#else
  const bool vnni = false, avx2 = false;
#endif
  TORCH_CHECK(vnni || avx2, "int8_gemv_q8 needs AVX-512 VNNI or AVX2 (int8_gemv_q8_supported())");
  const int64_t K = x.size(-1);
  const at::Tensor xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  float amax = 0.f;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::abs(xp[k]));
  const float sx = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
  std::vector<int8_t> xs(static_cast<size_t>((K + 63) / 64 * 64 + 64), 0);
  int32_t xsum = 0;
  for (int64_t k = 0; k < K; ++k) {
    xs[k] = static_cast<int8_t>(std::nearbyint(xp[k] * inv));
    xsum += xs[k];
  }
  const int32_t offset = 128 * xsum;
  return each_part(x, p, K, [&](size_t i, float* y, int64_t r0, int64_t r1) {
    const int8_t* q = p.q[i].data_ptr<int8_t>();
    const float* s = p.s[i].data_ptr<float>();
    for (int64_t r = r0; r < r1; ++r) {
#ifdef LMF_X86
      const int32_t dot = vnni ? row_vnni(xs.data(), q + r * K, K) - offset
                               : row_q8_avx2(xs.data(), q + r * K, K);
      y[r] = s[r] * sx * static_cast<float>(dot);
#else
      y[r] = 0.f;
#endif
    }
  });
}

bool int8_gemv_q8_supported() {
#ifdef LMF_X86
  return cpu_has_vnni() || cpu_has_avx2();
#else
  return false;
#endif
}

std::string int8_gemv_isa() {
#ifdef LMF_X86
  if (pick(false) == rows_avx512) return "avx512";
  if (pick(false) == rows_avx2) return "avx2";
#endif
  return "portable";
}

// How many of torch's intra-op threads `at::parallel_for` used over n items of grain 1: 1
// when the library was built without OpenMP (ATen's parallel_for is inline OpenMP in its
// headers), whatever torch.set_num_threads says (tests: lmforge.nn.cpp_ops).
int64_t parallel_threads(int64_t n) {
  std::vector<int64_t> used(static_cast<size_t>(std::max<int64_t>(at::get_num_threads(), 1)), 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && static_cast<size_t>(t) < used.size()) used[t] = 1;
  });
  int64_t count = 0;
  for (int64_t u : used) count += u;
  return count;
}

}  // namespace

namespace lmforge_gemv {
// `int8_gemv` of one weight for lmforge's other C++ ops (declared where used): y [N] =
// s ⊙ (q x), x fp32 [K], q int8 [N, K] row-major, s fp32 [N]; the same row loop and thread
// split as the op, so each output equals the op's bit for bit.
void int8_product(const float* x, const int8_t* q, const float* s, int64_t N, int64_t K,
                  float* y) {
  const RowsFn fn = pick(false);
  at::parallel_for(0, N, grain_rows(K), [&](int64_t r0, int64_t r1) { fn(x, q, s, y, K, r0, r1); });
}
}  // namespace lmforge_gemv

TORCH_LIBRARY_FRAGMENT(lmforge_ext, m) {
  m.def("parallel_threads(int n) -> int", &parallel_threads);
  m.def("int8_gemv(Tensor x, Tensor[] q, Tensor[] s, bool portable=False) -> Tensor");
  m.def("int8_gemv_isa() -> str", &int8_gemv_isa);
  m.def("int8_gemv_q8(Tensor x, Tensor[] q, Tensor[] s) -> Tensor");
  m.def("int8_gemv_q8_supported() -> bool", &int8_gemv_q8_supported);
  m.def("dense_gemv(Tensor x, Tensor[] w, bool portable=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge_ext, CPU, m) {
  m.impl("int8_gemv", &int8_gemv);
  m.impl("int8_gemv_q8", &int8_gemv_q8);
  m.impl("dense_gemv", &dense_gemv);
}
