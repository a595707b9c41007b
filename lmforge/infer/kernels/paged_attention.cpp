// Decode attention over a paged KV cache, reading K/V in place (lmforge.infer.paged_attention):
//   out[r, h] = sum_t softmax_t(q[r, h] . k[slot(r, t), g(h)] * scale) v[slot(r, t), g(h)]
// (Vaswani et al. 2017, eq. 1) over the row's visible tokens t in [lo_r, len_r), where
// slot(r, t) = tables[r, t / block_size] * block_size + t % block_size, g(h) = h / (H / Hkv)
// (GQA) and lo_r = max(0, len_r - window) for a sliding window (window < 0: none).
// q fp32 [n, H, D]; keys / values fp32 [slots, Hkv, D]; tables int64 [n, W]; lengths int64 [n].
// One (row, K/V head) per task, with its GQA query heads, over torch's intra-op threads;
// two passes over the row's keys (scores, then the value sum), scores in a per-thread buffer. The inner loops are
// vectorised by the compiler, once per instruction set (target_clones: AVX-512, AVX2, base).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

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

// One (row, K/V head) and its `groups` query heads (GQA): each key and value row is read
// once for all of them. Scores over the visible tokens block by block (no division per
// token), then a softmax per query head, then the value sums.
LMF_CLONES void attend_group(const float* q, const float* keys, const float* values,
                             const int64_t* table, int64_t lo, int64_t hi, int64_t block_size,
                             int64_t slot_stride, int64_t d, int64_t groups, float scale,
                             float* scores, float* out) {
  const int64_t len = hi - lo;
  for (int64_t t = lo; t < hi;) {
    const int64_t b = t / block_size, end = std::min(hi, (b + 1) * block_size);
    const float* k = keys + (table[b] * block_size + (t - b * block_size)) * slot_stride;
    for (; t < end; ++t, k += slot_stride) {
      for (int64_t g = 0; g < groups; ++g) {
        const float* qg = q + g * d;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < d; ++i) s += qg[i] * k[i];
        scores[g * len + (t - lo)] = s * scale;
      }
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    float* sg = scores + g * len;
    float m = sg[0];
    for (int64_t t = 1; t < len; ++t) m = std::max(m, sg[t]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < len; ++t) {
      const float e = exp_nonpositive(sg[t] - m);
      sg[t] = e;
      sum += e;
    }
    const float inv = 1.f / sum;  // sum >= 1: the max's own term
    for (int64_t t = 0; t < len; ++t) sg[t] *= inv;
  }
  for (int64_t i = 0; i < groups * d; ++i) out[i] = 0.f;
  for (int64_t t = lo; t < hi;) {
    const int64_t b = t / block_size, end = std::min(hi, (b + 1) * block_size);
    const float* v = values + (table[b] * block_size + (t - b * block_size)) * slot_stride;
    for (; t < end; ++t, v += slot_stride) {
      for (int64_t g = 0; g < groups; ++g) {
        const float p = scores[g * len + (t - lo)];
        float* og = out + g * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) og[i] += p * v[i];
      }
    }
  }
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& keys,
                                  const at::Tensor& values, const at::Tensor& tables,
                                  const at::Tensor& lengths, int64_t block_size, double scale,
                                  int64_t window) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.sizes() == keys.sizes(),
              "paged_decode_attention: q [n, H, D], keys / values [slots, Hkv, D]");
  TORCH_CHECK(q.scalar_type() == at::kFloat && keys.scalar_type() == at::kFloat &&
                  values.scalar_type() == at::kFloat,
              "paged_decode_attention: fp32 tensors");
  TORCH_CHECK(tables.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong,
              "paged_decode_attention: int64 tables and lengths");
  TORCH_CHECK(q.is_contiguous() && keys.is_contiguous() && values.is_contiguous() &&
                  tables.is_contiguous() && lengths.is_contiguous(),
              "paged_decode_attention: contiguous tensors");
  const int64_t n = q.size(0), heads = q.size(1), d = q.size(2), kv_heads = keys.size(1);
  TORCH_CHECK(keys.size(2) == d && heads % kv_heads == 0, "paged_decode_attention: shapes");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == n && lengths.numel() == n,
              "paged_decode_attention: tables [n, W], lengths [n]");
  const int64_t width = tables.size(1), groups = heads / kv_heads;
  auto out = at::empty({n, heads, d}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t capacity = width * block_size;
  // query heads h = kv * groups + g share K/V head kv: they are adjacent in q and out
  at::parallel_for(0, n * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(std::max<int64_t>(capacity, 1) * groups));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / kv_heads, kv = task % kv_heads;
      const int64_t hi = std::min(lp[r], capacity);
      const int64_t lo = window > 0 ? std::max<int64_t>(0, hi - window) : 0;
      float* o = op + task * groups * d;
      if (hi <= lo) {  // nothing visible: zeros
        std::fill(o, o + groups * d, 0.f);
        continue;
      }
      attend_group(qp + task * groups * d, kp + kv * d, vp + kv * d, tp + r * width, lo, hi,
                   block_size, kv_heads * d, d, groups, static_cast<float>(scale),
                   scores.data(), o);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge_ext, m) {
  m.def(
      "paged_decode_attention(Tensor q, Tensor keys, Tensor values, Tensor tables, "
      "Tensor lengths, int block_size, float scale, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge_ext, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
}
