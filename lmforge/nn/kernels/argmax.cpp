// The index of each row's largest value, as torch.argmax(x, -1) on the CPU picks it: the
// first maximum on ties, the first NaN if the row has one (lmforge.infer.sampling's greedy
// tokens). x fp32 [M, N] contiguous -> int64 [M]. torch's CPU argmax compares one element at a
// time (≈ 1.3 ns each: 16 rows of a 16,384-token vocabulary ≈ 340 us per decode step); here
// AVX2 takes the row's maximum 16 lanes at a time (NaNs flagged on the way), then finds its
// first position 8 lanes at a time. A portable loop elsewhere (and for rows with a NaN).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMF_X86 1
#endif

namespace {

int64_t row_argmax_portable(const float* x, int64_t n) {
  int64_t best = 0;
  float top = x[0];
  if (std::isnan(top)) return 0;
  for (int64_t i = 1; i < n; ++i) {
    const float v = x[i];
    if (std::isnan(v)) return i;
    if (v > top) top = v, best = i;
  }
  return best;
}

#ifdef LMF_X86
#define LMF_AVX2 __attribute__((target("avx2")))

LMF_AVX2 int64_t row_argmax_avx2(const float* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q),
                                         _mm256_cmp_ps(b, b, _CMP_UNORD_Q)));
    m0 = _mm256_max_ps(m0, a);
    m1 = _mm256_max_ps(m1, b);
  }
  if (_mm256_movemask_ps(nan)) return row_argmax_portable(x, n);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float top = lanes[0];
  for (int k = 1; k < 8; ++k) top = std::max(top, lanes[k]);
  for (int64_t j = i; j < n; ++j) {
    if (std::isnan(x[j])) return row_argmax_portable(x, n);
    top = std::max(top, x[j]);
  }
  const __m256 t = _mm256_set1_ps(top);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + j), t, _CMP_EQ_OQ));
    if (hit) return j + __builtin_ctz(static_cast<unsigned>(hit));
  }
  for (; j < n; ++j)
    if (x[j] == top) return j;
  return 0;  // unreachable: the maximum is in the row
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
#endif

at::Tensor argmax_rows(const at::Tensor& x, bool portable) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu() &&
                  x.is_contiguous() && x.size(1) > 0,
              "argmax_rows: x must be a contiguous fp32 CPU tensor [M, N] with N > 0, got ",
              x.sizes(), " ", x.scalar_type());
  const int64_t M = x.size(0), N = x.size(1);
  at::Tensor out = at::empty({M}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  auto fn = row_argmax_portable;
#ifdef LMF_X86
  static const bool avx2 = cpu_has_avx2();
  if (avx2 && !portable) fn = row_argmax_avx2;
#endif
  const int64_t grain = std::max<int64_t>(1, 65536 / N);
  at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) op[r] = fn(xp + r * N, N);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge_ext, m) {
  m.def("argmax_rows(Tensor x, bool portable=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge_ext, CPU, m) { m.impl("argmax_rows", &argmax_rows); }
