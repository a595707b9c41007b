// Decode attention over a paged KV cache, reading K/V in place (lmforge.infer.paged_attention):
//   out[r, h] = sum_t softmax_t(q[r, h] . k[slot(r, t), g(h)] * scale) v[slot(r, t), g(h)]
// (Vaswani et al. 2017, eq. 1) over the row's visible tokens t in [lo_r, len_r), where
// slot(r, t) = tables[r, t / block_size] * block_size + t % block_size, g(h) = h / (H / Hkv)
// (GQA) and lo_r = max(0, len_r - window) for a sliding window (window < 0: none).
// q fp32 [n, H, D]; keys / values fp32 [slots, Hkv, D]; tables int64 [n, W]; lengths int64 [n].
// One row (or a chunk of its K/V heads) per task, over torch's intra-op threads; two
// passes over the row's blocks (scores, then the value sum), scores in a per-thread buffer. The inner loops are
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

// One row and its K/V heads [kv0, kv1), each with its `groups` query heads (GQA): a token's
// keys (values) for all these heads are adjacent in the cache, so each pass streams the
// row's blocks front to back (a per-head pass would stride by H_kv * D floats, and the
// hardware prefetcher stops at every page). Scores over the visible tokens, then a softmax
// per query head, then the value sums.
// D > 0: the head size as a compile-time constant (the loops over it unroll fully).
template <int64_t D>
LMF_CLONES void attend_row(const float* q, const float* keys, const float* values,
                           const int64_t* table, int64_t lo, int64_t hi, int64_t block_size,
                           int64_t slot_stride, int64_t head_dim, int64_t heads,
                           int64_t groups, float scale, float* scores, float* out) {
  const int64_t d = D > 0 ? D : head_dim;
  const int64_t len = hi - lo, rows = heads * groups;  // query heads of this task
  for (int64_t t = lo; t < hi;) {
    const int64_t b = t / block_size, end = std::min(hi, (b + 1) * block_size);
    const float* k = keys + (table[b] * block_size + (t - b * block_size)) * slot_stride;
    for (; t < end; ++t, k += slot_stride) {
      for (int64_t j = 0; j < rows; ++j) {
        const float* qj = q + j * d;
        const float* kj = k + (j / groups) * d;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < d; ++i) s += qj[i] * kj[i];
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
    const float* v = values + (table[b] * block_size + (t - b * block_size)) * slot_stride;
    for (; t < end; ++t, v += slot_stride) {
      for (int64_t j = 0; j < rows; ++j) {
        const float p = scores[j * len + (t - lo)];
        const float* vj = v + (j / groups) * d;
        float* oj = out + j * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) oj[i] += p * vj[i];
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
  // Query heads h = kv * groups + g share K/V head kv: they are adjacent in q and out. A task
  // is a row and a chunk of its K/V heads: whole rows when there are enough of them to keep
  // every thread busy, else each row's heads split into up to `chunks` parts.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(kv_heads, std::max<int64_t>(1, (2 * threads + n - 1) / n));
  const int64_t per_chunk = (kv_heads + chunks - 1) / chunks;
  at::parallel_for(0, n * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(
        static_cast<size_t>(std::max<int64_t>(capacity, 1) * per_chunk * groups));
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
      const auto attend = d == 64 ? attend_row<64> : d == 128 ? attend_row<128> : attend_row<0>;
      attend(qp + first, kp + kv0 * d, vp + kv0 * d, tp + r * width, lo, hi, block_size,
             kv_heads * d, d, kv1 - kv0, groups, static_cast<float>(scale), scores.data(), o);
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
