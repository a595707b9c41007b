// Decode attention over a paged KV cache, reading K/V in place (lmforge.infer.paged_attention):
//   out[r, h] = sum_t softmax_t(q[r, h] . k[slot(r, t), g(h)] * scale) v[slot(r, t), g(h)]
// (Vaswani et al. 2017, eq. 1) over the row's visible tokens t in [lo_r, len_r), where
// slot(r, t) = tables[r, t / block_size] * block_size + t % block_size, g(h) = h / (H / Hkv)
// (GQA) and lo_r = max(0, len_r - window) for a sliding window (window < 0: none).
// q fp32 [n, H, D]; keys / values [slots, Hkv, D] fp32, or fp16 / bf16 (a half-precision KV
// cache: each element widened to fp32 as it is loaded, the arithmetic fp32 as before); tables
// int64 [n, W]; lengths int64 [n].
// One row (or a chunk of its K/V heads) per task, over torch's intra-op threads; two
// passes over the row's blocks (scores, then the value sum), scores in a per-thread buffer.
// Head sizes 64 and 128 on AVX-512 or AVX2 + FMA: intrinsics (`attend_row_avx512`,
// `attend_row_avx2`); otherwise loops the compiler vectorises once per instruction set
// (target_clones: AVX-512, AVX2, base).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LMF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LMF_CLONES
#endif

// exp(x) for x <= 0 (softmax after subtracting the max), written so that the compiler
// vectorises it: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes' expf polynomial
// (Moshier, "Methods and Programs for Mathematical Functions", 1989; relative error ~1e-7),
// 2^n put into the exponent bits. Below -87 the result is 0 (a negligible weight).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// A K/V element as fp32 (fp16 / bf16 caches are widened exactly).
inline float widen(float v) { return v; }
inline float widen(c10::Half v) { return static_cast<float>(v); }
inline float widen(c10::BFloat16 v) { return static_cast<float>(v); }

// One row and its K/V heads [kv0, kv1), each with its `groups` query heads (GQA): a token's
// keys (values) for all these heads are adjacent in the cache, so each pass streams the
// row's blocks front to back (a per-head pass would stride by H_kv * D floats, and the
// hardware prefetcher stops at every page). Scores over the visible tokens, then a softmax
// per query head, then the value sums.
template <typename T>
LMF_CLONES void attend_row(const float* q, const T* keys, const T* values,
                           const int64_t* table, int64_t lo, int64_t hi, int64_t block_size,
                           int64_t slot_stride, int64_t d, int64_t heads, int64_t groups,
                           float scale, float* scores, float* out) {
  const int64_t len = hi - lo, rows = heads * groups;  // query heads of this task
  for (int64_t t = lo; t < hi;) {
    const int64_t b = t / block_size, end = std::min(hi, (b + 1) * block_size);
    const T* k = keys + (table[b] * block_size + (t - b * block_size)) * slot_stride;
    for (; t < end; ++t, k += slot_stride) {
      for (int64_t j = 0; j < rows; ++j) {
        const float* qj = q + j * d;
        const T* kj = k + (j / groups) * d;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < d; ++i) s += qj[i] * widen(kj[i]);
        scores[j * len + (t - lo)] = s * scale;
      }
    }
  }
  for (int64_t j = 0; j < rows; ++j) {
    float* sj = scores + j * len;
    float m = sj[0];
    for (int64_t t = 1; t < len; ++t) m = std::max(m, sj[t]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < len; ++t) {
      const float e = exp_nonpositive(sj[t] - m);
      sj[t] = e;
      sum += e;
    }
    const float inv = 1.f / sum;  // sum >= 1: the max's own term
    for (int64_t t = 0; t < len; ++t) sj[t] *= inv;
  }
  for (int64_t i = 0; i < rows * d; ++i) out[i] = 0.f;
  for (int64_t t = lo; t < hi;) {
    const int64_t b = t / block_size, end = std::min(hi, (b + 1) * block_size);
    const T* v = values + (table[b] * block_size + (t - b * block_size)) * slot_stride;
    for (; t < end; ++t, v += slot_stride) {
      for (int64_t j = 0; j < rows; ++j) {
        const float p = scores[j * len + (t - lo)];
        const T* vj = v + (j / groups) * d;
        float* oj = out + j * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) oj[i] += p * widen(vj[i]);
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same row on AVX-512 for head sizes D = 16 * NV (64, 128), written with intrinsics:
// the compiler's version reduces every score across a vector on its own and evaluates exp
// one lane at a time. Here each token's K row (all the task's heads, adjacent) is read
// once, front to back, into one partial vector per query head, and 16 tokens' partials are
// reduced together (`reduce16`); exp runs on 16 lanes; the value sums take each token's V
// row once, front to back, into the heads' sums (in L1). Reading the rows head by head
// (16 tokens of one head, then the next head) was up to 2x slower from memory. `offsets`
// holds each visible token's cache row; `scores` has room for len * H scores + H sums.
// Per call, against the compiler's version (one thread, D 64, 30m / 5m shapes): one row of
// 32-160 tokens 20.8 -> 15.2 ms per 128 steps x 8 layers, 16 rows of 64-128 tokens
// 131 -> 98 ms, GRPO's 32 rows of 28-92 tokens 42 -> 32 ms per rollout.
#define LMF_AVX512 __attribute__((target("avx512f,avx512dq")))

// Lane i of the result: the sum of the 16 lanes of v[i] (a transpose-and-add tree: halves,
// then quarters, then pairs, then single lanes, leaving token 4m + q in lane 4q + m).
LMF_AVX512 inline __m512 reduce16(const __m512* v) {
  __m512 c[8], e[4], g[2];
  for (int k = 0; k < 8; ++k) {
    const __m512 a = v[2 * k], b = v[2 * k + 1];
    c[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int k = 0; k < 4; ++k) {
    const __m512 a = c[2 * k], b = c[2 * k + 1];
    e[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  for (int k = 0; k < 2; ++k) {
    const __m512 a = e[2 * k], b = e[2 * k + 1];
    g[k] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  const __m512d a = _mm512_castps_pd(g[0]), b = _mm512_castps_pd(g[1]);
  const __m512 h = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, h);
}

// `exp_nonpositive` on 16 lanes (the same reduction and polynomial).
LMF_AVX512 inline __m512 exp_nonpositive16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i bits =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

constexpr int64_t kMaxRows = 16;  // query heads per task on this path (the caller checks)

// 16 K/V elements as fp32: loaded, or fp16 / bf16 widened.
LMF_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
LMF_AVX512 inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
LMF_AVX512 inline __m512 load16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __mmask16 first_lanes(int64_t m) {
  return m >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << m) - 1);
}

template <int NV, typename T>
LMF_AVX512 void attend_row_avx512(const float* q, const T* keys, const T* values,
                                  const int64_t* offsets, int64_t len, int64_t heads,
                                  int64_t groups, float scale, float* scores, float* out) {
  constexpr int64_t D = 16 * NV;
  const int64_t rows = heads * groups;  // query heads; j reads K/V head j / groups
  // scores, 16 tokens at a time: each token's K row (all heads, adjacent) read once, front
  // to back, into one partial vector per query head; then 16 tokens reduced per head
  __m512 part[kMaxRows][16];
  for (int64_t t0 = 0; t0 < len; t0 += 16) {
    const int64_t m = std::min<int64_t>(16, len - t0);
    for (int64_t u = m; u < 16; ++u)  // past the row's end: lanes the store leaves out
      for (int64_t j = 0; j < rows; ++j) part[j][u] = _mm512_setzero_ps();
    for (int64_t u = 0; u < m; ++u) {
      const T* k = keys + offsets[t0 + u];
      for (int64_t j = 0; j < rows; ++j) {
        const T* kj = k + (j / groups) * D;
        const float* qj = q + j * D;
        __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qj), load16(kj));
        for (int c = 1; c < NV; ++c)
          acc = _mm512_fmadd_ps(_mm512_loadu_ps(qj + 16 * c), load16(kj + 16 * c), acc);
        part[j][u] = acc;
      }
    }
    for (int64_t j = 0; j < rows; ++j)
      _mm512_mask_storeu_ps(scores + j * len + t0, first_lanes(m),
                            _mm512_mul_ps(reduce16(part[j]), _mm512_set1_ps(scale)));
  }
  // softmax numerators exp(s - max) in place; 1 / sum kept per query head
  for (int64_t j = 0; j < rows; ++j) {
    float* sj = scores + j * len;
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t0 = 0; t0 < len; t0 += 16) {
      const __mmask16 mask = first_lanes(len - t0);
      mx = _mm512_mask_max_ps(mx, mask, mx, _mm512_maskz_loadu_ps(mask, sj + t0));
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t t0 = 0; t0 < len; t0 += 16) {
      const __mmask16 mask = first_lanes(len - t0);
      const __m512 e = exp_nonpositive16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, sj + t0), top));
      _mm512_mask_storeu_ps(sj + t0, mask, e);
      sum = _mm512_mask_add_ps(sum, mask, sum, e);
    }
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(out + j * D + 16 * c, _mm512_setzero_ps());
    scores[rows * len + j] = 1.f / _mm512_reduce_add_ps(sum);  // sum >= 1: the max's term
  }
  // value sums: each token's V row (all heads) read once, front to back, into the heads'
  // sums (in L1)
  for (int64_t t = 0; t < len; ++t) {
    const T* v = values + offsets[t];
    for (int64_t j = 0; j < rows; ++j) {
      const __m512 pt = _mm512_set1_ps(scores[j * len + t]);
      const T* vj = v + (j / groups) * D;
      float* oj = out + j * D;
      for (int c = 0; c < NV; ++c)
        _mm512_storeu_ps(oj + 16 * c, _mm512_fmadd_ps(pt, load16(vj + 16 * c),
                                                      _mm512_loadu_ps(oj + 16 * c)));
    }
  }
  for (int64_t j = 0; j < rows; ++j) {
    const __m512 inv = _mm512_set1_ps(scores[rows * len + j]);
    for (int c = 0; c < NV; ++c)
      _mm512_storeu_ps(out + j * D + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(out + j * D + 16 * c), inv));
  }
}

// The same row on AVX2 + FMA (CPUs without AVX-512: most laptops, AMD before Zen 4), head
// sizes D = 8 * NV (64, 128): 8 tokens' partial vectors reduced together (`reduce8`), exp on
// 8 lanes (`attend_row_avx2` below). The compiler's version (target_clones' AVX2 clone)
// reduced every score on its own and took exp one lane at a time (one thread, D 64, H 8 /
// H_kv 4, 16 rows of 64-124 tokens: 260 -> 148 us per call).
#define LMF_AVX2_FMA __attribute__((target("avx2,fma,f16c")))

// Lane i of the result: the sum of the 8 lanes of v[i] (pairwise adds, then the halves).
LMF_AVX2_FMA inline __m256 reduce8(const __m256* v) {
  const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

// `exp_nonpositive` on 8 lanes (the same reduction and polynomial).
LMF_AVX2_FMA inline __m256 exp_nonpositive8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  const __m256i bits =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// 8 K/V elements as fp32: loaded, or fp16 (F16C) / bf16 widened.
LMF_AVX2_FMA inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
LMF_AVX2_FMA inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
LMF_AVX2_FMA inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Brings one token's K/V row (`bytes` from `row`) toward L1 ahead of its use.
LMF_AVX2_FMA inline void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

constexpr int64_t kAhead = 4;  // tokens a row's K (V) rows are prefetched ahead of their use

// One row's K/V heads on AVX2 + FMA, G query heads per K/V head (GQA), head size D = 8 * NV:
// each 8-float chunk of a K row is widened once and multiplied into the G heads' partial
// vectors; 8 tokens' partials are reduced together. The value pass streams the V rows
// front to back, each chunk widened once for its G heads' sums (in L1). Both passes
// prefetch the rows `kAhead` tokens ahead (the scores pass runs on into the first V rows):
// a row's blocks lie anywhere in the pool and the hardware prefetcher stops at each page.
// Against the previous version (each chunk widened per query head, no prefetch, one
// thread, 16 rows of 65-127 tokens, 8 layers of the 30m shapes, fp16 K/V in huge pages,
// caches flushed): 1.66 -> 1.33 ms; K/V in L2 (before the run-on prefetch): 1.07 -> 0.66 ms
// (BENCHMARKS.md).
template <int NV, int G, typename T>
LMF_AVX2_FMA void attend_row_avx2(const float* q, const T* keys, const T* values,
                                  const int64_t* offsets, int64_t len, int64_t heads,
                                  float scale, float* scores, float* out) {
  constexpr int64_t D = 8 * NV;
  const int64_t rows = heads * G, bytes = heads * D * static_cast<int64_t>(sizeof(T));
  __m256 part[kMaxRows][8];
  alignas(32) float lanes[8];
  for (int64_t u = 0; u < std::min(kAhead, len); ++u) prefetch_row(keys + offsets[u], bytes);
  for (int64_t t0 = 0; t0 < len; t0 += 8) {
    const int64_t m = std::min<int64_t>(8, len - t0);
    for (int64_t u = m; u < 8; ++u)
      for (int64_t j = 0; j < rows; ++j) part[j][u] = _mm256_setzero_ps();
    for (int64_t u = 0; u < m; ++u) {
      const int64_t ahead = t0 + u + kAhead;
      if (ahead < len)
        prefetch_row(keys + offsets[ahead], bytes);
      else if (ahead < len + kAhead)
        prefetch_row(values + offsets[ahead - len], bytes);
      const T* k = keys + offsets[t0 + u];
      for (int64_t g = 0; g < heads; ++g) {
        const T* kg = k + g * D;
        const float* qg = q + g * G * D;
        __m256 acc[G];
        const __m256 k0 = load8(kg);
        for (int j = 0; j < G; ++j) acc[j] = _mm256_mul_ps(_mm256_loadu_ps(qg + j * D), k0);
        for (int c = 1; c < NV; ++c) {
          const __m256 kc = load8(kg + 8 * c);
          for (int j = 0; j < G; ++j)
            acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(qg + j * D + 8 * c), kc, acc[j]);
        }
        for (int j = 0; j < G; ++j) part[g * G + j][u] = acc[j];
      }
    }
    for (int64_t j = 0; j < rows; ++j) {
      const __m256 sc = _mm256_mul_ps(reduce8(part[j]), _mm256_set1_ps(scale));
      if (m == 8) {
        _mm256_storeu_ps(scores + j * len + t0, sc);
      } else {
        _mm256_store_ps(lanes, sc);
        std::copy(lanes, lanes + m, scores + j * len + t0);
      }
    }
  }
  const int64_t full = len / 8 * 8;
  for (int64_t j = 0; j < rows; ++j) {
    float* sj = scores + j * len;
    __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t0 = 0; t0 < full; t0 += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sj + t0));
    _mm256_store_ps(lanes, mx);
    float top = *std::max_element(lanes, lanes + 8);
    for (int64_t t = full; t < len; ++t) top = std::max(top, sj[t]);
    __m256 sum8 = _mm256_setzero_ps();
    for (int64_t t0 = 0; t0 < full; t0 += 8) {
      const __m256 e = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(sj + t0), _mm256_set1_ps(top)));
      _mm256_storeu_ps(sj + t0, e);
      sum8 = _mm256_add_ps(sum8, e);
    }
    _mm256_store_ps(lanes, sum8);
    float sum = 0.f;
    for (int u = 0; u < 8; ++u) sum += lanes[u];
    for (int64_t t = full; t < len; ++t) {
      sj[t] = exp_nonpositive(sj[t] - top);
      sum += sj[t];
    }
    for (int c = 0; c < NV; ++c) _mm256_storeu_ps(out + j * D + 8 * c, _mm256_setzero_ps());
    scores[rows * len + j] = 1.f / sum;  // sum >= 1: the max's term
  }
  for (int64_t t = 0; t < len; ++t) {
    if (t + kAhead < len) prefetch_row(values + offsets[t + kAhead], bytes);
    const T* v = values + offsets[t];
    for (int64_t g = 0; g < heads; ++g) {
      __m256 pt[G];
      for (int j = 0; j < G; ++j) pt[j] = _mm256_broadcast_ss(scores + (g * G + j) * len + t);
      float* og = out + g * G * D;
      for (int c = 0; c < NV; ++c) {
        const __m256 vc = load8(v + g * D + 8 * c);
        for (int j = 0; j < G; ++j)
          _mm256_storeu_ps(og + j * D + 8 * c,
                           _mm256_fmadd_ps(pt[j], vc, _mm256_loadu_ps(og + j * D + 8 * c)));
      }
    }
  }
  for (int64_t j = 0; j < rows; ++j) {
    const __m256 inv = _mm256_set1_ps(scores[rows * len + j]);
    for (int c = 0; c < NV; ++c)
      _mm256_storeu_ps(out + j * D + 8 * c, _mm256_mul_ps(_mm256_loadu_ps(out + j * D + 8 * c), inv));
  }
}

// `attend_row_avx2` for head size d (64, 128) and G = groups (1-8); null for other shapes.
template <typename T>
using AvxRow = void (*)(const float*, const T*, const T*, const int64_t*, int64_t, int64_t,
                        float, float*, float*);

template <typename T, int G>
AvxRow<T> avx2_row_for(int64_t d) {
  return d == 64 ? attend_row_avx2<8, G, T> : d == 128 ? attend_row_avx2<16, G, T> : nullptr;
}

template <typename T>
AvxRow<T> avx2_row(int64_t d, int64_t groups) {
  switch (groups) {
    case 1: return avx2_row_for<T, 1>(d);
    case 2: return avx2_row_for<T, 2>(d);
    case 3: return avx2_row_for<T, 3>(d);
    case 4: return avx2_row_for<T, 4>(d);
    case 5: return avx2_row_for<T, 5>(d);
    case 6: return avx2_row_for<T, 6>(d);
    case 7: return avx2_row_for<T, 7>(d);
    case 8: return avx2_row_for<T, 8>(d);
    default: return nullptr;
  }
}

bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}

// `exp_nonpositive_n` on 8 lanes: the multiple of 8 it covered.
LMF_AVX2_FMA int64_t exp_nonpositive_avx2(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp_nonpositive8(_mm256_loadu_ps(x + i)));
  return i;
}
#endif

// The op's work for K/V elements of type T (fp32, fp16, bf16), after the checks.
template <typename T>
void attend_all(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                const at::Tensor& tables, const at::Tensor& lengths, int64_t block_size,
                double scale, int64_t window, at::Tensor& out) {
  const int64_t n = q.size(0), heads = q.size(1), d = q.size(2), kv_heads = keys.size(1);
  const int64_t width = tables.size(1), groups = heads / kv_heads;
  const float* qp = q.data_ptr<float>();
  const T* kp = static_cast<const T*>(keys.data_ptr());
  const T* vp = static_cast<const T*>(values.data_ptr());
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t capacity = width * block_size;
  // Query heads h = kv * groups + g share K/V head kv: they are adjacent in q and out. A task
  // is a row and a chunk of its K/V heads: whole rows when there are enough of them to keep
  // every thread busy, else each row's heads split into up to `chunks` parts.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks =
      threads > 1 ? std::min<int64_t>(kv_heads, std::max<int64_t>(1, (2 * threads + n - 1) / n))
                  : 1;
  const int64_t per_chunk = (kv_heads + chunks - 1) / chunks;
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = cpu_has_avx512(), avx2 = !avx512 && cpu_has_avx2_fma();
  const AvxRow<T> avx2_attend = avx2 ? avx2_row<T>(d, groups) : nullptr;
  const bool fast = (avx512 ? d == 64 || d == 128 : avx2_attend != nullptr) &&
                    per_chunk * groups <= kMaxRows;
#else
  const bool fast = false;
#endif
  at::parallel_for(0, n * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(
        static_cast<size_t>((std::max<int64_t>(capacity, 1) + 1) * per_chunk * groups));
    std::vector<int64_t> offsets(static_cast<size_t>(fast ? std::max<int64_t>(capacity, 1) : 0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / chunks, kv0 = (task % chunks) * per_chunk;
      const int64_t kv1 = std::min(kv_heads, kv0 + per_chunk);
      if (kv0 >= kv1) continue;
      const int64_t hi = std::min(lp[r], capacity);
      const int64_t lo = window > 0 ? std::max<int64_t>(0, hi - window) : 0;
      const int64_t first = (r * kv_heads + kv0) * groups * d;  // offset of q and out
      float* o = op + first;
      if (hi <= lo) {  // nothing visible: zeros
        std::fill(o, o + (kv1 - kv0) * groups * d, 0.f);
        continue;
      }
#if defined(__x86_64__) && defined(__GNUC__)
      if (fast) {
        const int64_t* table = tp + r * width;
        for (int64_t t = lo; t < hi;) {  // each visible token's cache row, block by block
          const int64_t b = t / block_size, end = std::min(hi, (b + 1) * block_size);
          int64_t at = (table[b] * block_size + (t - b * block_size)) * kv_heads * d;
          for (; t < end; ++t, at += kv_heads * d) offsets[t - lo] = at;
        }
        if (avx512) {
          (d == 64 ? attend_row_avx512<4, T> : attend_row_avx512<8, T>)(
              qp + first, kp + kv0 * d, vp + kv0 * d, offsets.data(), hi - lo, kv1 - kv0, groups,
              static_cast<float>(scale), scores.data(), o);
        } else {
          avx2_attend(qp + first, kp + kv0 * d, vp + kv0 * d, offsets.data(), hi - lo, kv1 - kv0,
                      static_cast<float>(scale), scores.data(), o);
        }
        continue;
      }
#endif
      attend_row<T>(qp + first, kp + kv0 * d, vp + kv0 * d, tp + r * width, lo, hi, block_size,
                    kv_heads * d, d, kv1 - kv0, groups, static_cast<float>(scale), scores.data(),
                    o);
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& keys,
                                  const at::Tensor& values, const at::Tensor& tables,
                                  const at::Tensor& lengths, int64_t block_size, double scale,
                                  int64_t window) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.sizes() == keys.sizes(),
              "paged_decode_attention: q [n, H, D], keys / values [slots, Hkv, D]");
  const auto kv = keys.scalar_type();
  TORCH_CHECK(q.scalar_type() == at::kFloat && values.scalar_type() == kv &&
                  (kv == at::kFloat || kv == at::kHalf || kv == at::kBFloat16),
              "paged_decode_attention: fp32 queries; keys and values both fp32, fp16 or bf16, "
              "got ", q.scalar_type(), ", ", kv, " and ", values.scalar_type());
  TORCH_CHECK(tables.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong,
              "paged_decode_attention: int64 tables and lengths");
  TORCH_CHECK(q.is_contiguous() && keys.is_contiguous() && values.is_contiguous() &&
                  tables.is_contiguous() && lengths.is_contiguous(),
              "paged_decode_attention: contiguous tensors");
  const int64_t n = q.size(0), heads = q.size(1), d = q.size(2), kv_heads = keys.size(1);
  TORCH_CHECK(keys.size(2) == d && heads % kv_heads == 0, "paged_decode_attention: shapes");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == n && lengths.numel() == n,
              "paged_decode_attention: tables [n, W], lengths [n]");
  auto out = at::empty({n, heads, d}, q.options());
  if (kv == at::kHalf)
    attend_all<c10::Half>(q, keys, values, tables, lengths, block_size, scale, window, out);
  else if (kv == at::kBFloat16)
    attend_all<c10::BFloat16>(q, keys, values, tables, lengths, block_size, scale, window, out);
  else
    attend_all<float>(q, keys, values, tables, lengths, block_size, scale, window, out);
  return out;
}

}  // namespace

namespace lmforge_math {
// out[i] = exp(x[i]) for x[i] <= 0 (`exp_nonpositive`: 8 lanes at a time on AVX2 + FMA), for
// lmforge's other C++ ops (kernels/decode_layer.cpp's SiLU).
void exp_nonpositive_n(const float* x, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = cpu_has_avx2_fma();
  if (avx2) i = exp_nonpositive_avx2(x, out, n);
#endif
  for (; i < n; ++i) out[i] = exp_nonpositive(x[i]);
}
}  // namespace lmforge_math

namespace lmforge_attention {
// The op for lmforge's other C++ ops (kernels/decode_layer.cpp's whole decode step).
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                        const at::Tensor& tables, const at::Tensor& lengths, int64_t block_size,
                        double scale, int64_t window) {
  return paged_decode_attention(q, keys, values, tables, lengths, block_size, scale, window);
}
}  // namespace lmforge_attention

TORCH_LIBRARY_FRAGMENT(lmforge_ext, m) {
  m.def(
      "paged_decode_attention(Tensor q, Tensor keys, Tensor values, Tensor tables, "
      "Tensor lengths, int block_size, float scale, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge_ext, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
}
