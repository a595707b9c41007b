// Dense fp32 products of several rows against a weight packed once into panels
// (lmforge.nn.panel_gemm):
//   y[m, n] = sum_k x[m, k] * W[n, k],   x fp32 [M, K], W fp32 [N, K] (nn.Linear's layout),
// with W stored as panels P [ceil(N / 16), K, 16]: P[p, k, j] = W[16 p + j, k] (zero rows pad
// the last panel). A 16-wide panel row is 64 contiguous bytes, one cache line, read once per
// k by a register tile of up to 6 rows x 16 columns: 12 AVX2 accumulators, per k two weight
// loads, 6 broadcasts of x and 12 FMAs (Goto & van de Geijn 2008, the micro-kernel; the
// panel is the packed B of their GEBP). A panel (K x 64 B: 32 KB at K = 512) stays in L2
// while every 6-row tile of a 72-row chunk of x passes over it; the next panel is prefetched
// meanwhile, spread over the tiles, so its DRAM stream overlaps the FMAs. Rows of x beyond 72
// are further chunks (the weights are re-read per chunk: compute-bound by then). Panels are
// split over torch's intra-op threads.
// Weight-only int8 panels too (int8_panel_gemm): P holds the int8 codes q of W = s q (one
// fp32 scale per output, Jacob et al. 2018 eq. 1), 16 bytes per k (a line holds 4 k); the
// tiles widen each code to fp32 in registers and y[m, n] = s[n] * sum_k x[m, k] q[n, k], a
// quarter of the fp32 panels' bytes for the same FMAs.
// AVX2 + FMA (runtime check); a portable loop elsewhere (the same sums, in the same order).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMF_X86 1
#endif

namespace {

constexpr int64_t NR = 16;  // panel width: columns of W per panel (two 8-lane vectors)
constexpr int64_t MR = 6;   // rows of x per register tile
constexpr int64_t MC = 72;  // rows of x per chunk (twelve tiles share a panel from L2)

// One tile without SIMD: R rows x up to 16 columns, k ascending (as the vector tile); `s`:
// the columns' scales (int8 panels) or nullptr.
template <typename W>
void tile_portable(const float* x, int64_t ldx, int64_t rows, const W* p, int64_t K, float* y,
                   int64_t ldy, int64_t ncols, const float* s) {
  for (int64_t r = 0; r < rows; ++r) {
    float acc[NR] = {};
    for (int64_t k = 0; k < K; ++k) {
      const float b = x[r * ldx + k];
      for (int64_t j = 0; j < NR; ++j) acc[j] += b * static_cast<float>(p[k * NR + j]);
    }
    for (int64_t j = 0; j < ncols; ++j) y[r * ldy + j] = s ? s[j] * acc[j] : acc[j];
  }
}

#ifdef LMF_X86
#define LMF_AVX2 __attribute__((target("avx2,fma")))

// Columns 0-7 and 8-15 of a panel row as fp32: loaded, or int8 codes widened.
LMF_AVX2 inline __m256 cols_lo(const float* p) { return _mm256_loadu_ps(p); }
LMF_AVX2 inline __m256 cols_hi(const float* p) { return _mm256_loadu_ps(p + 8); }
LMF_AVX2 inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
LMF_AVX2 inline __m256 cols_lo(const int8_t* p) { return widen8(p); }
LMF_AVX2 inline __m256 cols_hi(const int8_t* p) { return widen8(p + 8); }

// Named accumulators (an array of __m256 was spilled to the stack on every k by g++).
#define LMF_TILE_ROW(i, kk)                                   \
  if constexpr (R > i) {                                      \
    const __m256 b = _mm256_broadcast_ss(x + i * ldx + (kk)); \
    a##i##0 = _mm256_fmadd_ps(b, w0, a##i##0);                \
    a##i##1 = _mm256_fmadd_ps(b, w1, a##i##1);                \
  }
#define LMF_TILE_K(kk)                                                             \
  {                                                                                \
    const __m256 w0 = cols_lo(p + (kk) * NR);                                      \
    const __m256 w1 = cols_hi(p + (kk) * NR);                                      \
    LMF_TILE_ROW(0, kk) LMF_TILE_ROW(1, kk) LMF_TILE_ROW(2, kk) LMF_TILE_ROW(3, kk) \
    LMF_TILE_ROW(4, kk) LMF_TILE_ROW(5, kk)                                        \
  }
#define LMF_TILE_OUT(i) \
  if constexpr (R > i) out[2 * i] = a##i##0, out[2 * i + 1] = a##i##1;

// `next`: the lines of the next panel this tile prefetches, one every `every` k. k is
// unrolled by two (30m shapes, 1 thread: 2 rows 10.2 -> 8.1 ms, 512 rows +5 %). `s`: the
// columns' scales (int8 panels), applied to the sums; nullptr for fp32.
template <int R, typename W>
LMF_AVX2 void tile_avx2(const float* x, int64_t ldx, const W* p, int64_t K, float* y,
                        int64_t ldy, int64_t ncols, const char* next, int64_t every,
                        const float* s) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
         a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  const char* q = next;
  int64_t c = 0, k = 0;
  for (; k + 2 <= K; k += 2) {
    // at most one line per two k: with one tile (every = 1) half the next panel, which ran
    // 2 rows of the 30m shapes in 8.3 ms, against 9.9 for all of it and 9.9 for none
    if (q != nullptr && (c += 2) >= every) {
      c -= every;
      _mm_prefetch(q, _MM_HINT_T0);
      q += 64;
    }
    LMF_TILE_K(k) LMF_TILE_K(k + 1)
  }
  if (k < K) LMF_TILE_K(k)
  __m256 out[2 * MR];
  LMF_TILE_OUT(0) LMF_TILE_OUT(1) LMF_TILE_OUT(2) LMF_TILE_OUT(3) LMF_TILE_OUT(4)
  LMF_TILE_OUT(5)
  if (s != nullptr) {
    alignas(32) float sc[NR] = {};
    std::copy(s, s + ncols, sc);
    const __m256 s0 = _mm256_load_ps(sc), s1 = _mm256_load_ps(sc + 8);
    for (int r = 0; r < R; ++r)
      out[2 * r] = _mm256_mul_ps(out[2 * r], s0), out[2 * r + 1] = _mm256_mul_ps(out[2 * r + 1], s1);
  }
  for (int r = 0; r < R; ++r) {
    if (ncols == NR) {
      _mm256_storeu_ps(y + r * ldy, out[2 * r]);
      _mm256_storeu_ps(y + r * ldy + 8, out[2 * r + 1]);
    } else {  // the last panel of an N that is not a multiple of 16
      alignas(32) float buf[NR];
      _mm256_store_ps(buf, out[2 * r]);
      _mm256_store_ps(buf + 8, out[2 * r + 1]);
      for (int64_t j = 0; j < ncols; ++j) y[r * ldy + j] = buf[j];
    }
  }
}

// Every tile of `rows` (<= MC) rows against one panel. The next panel's lines are prefetched
// spread evenly over this panel's tiles (tile t fetches its share, one line every `every`
// k): a steady stream DRAM keeps up with. One line per k in one tile instead (a burst the
// miss buffers cannot hold) ran the 30m shapes at 16 rows in 18.8 ms, spread in 14.1.
template <typename W>
LMF_AVX2 void panel_avx2(const float* x, int64_t rows, int64_t K, const W* p, float* y,
                         int64_t ldy, int64_t ncols, const W* next, const float* s) {
  const int64_t tiles = (rows + MR - 1) / MR;
  const int64_t lines = (K * NR * static_cast<int64_t>(sizeof(W)) + 63) / 64;  // per panel
  for (int64_t t = 0; t < tiles; ++t) {
    // rows split evenly over the tiles (16 = 6 + 5 + 5, not 6 + 6 + 4: a 4-row tile's 8
    // accumulators wait on the FMA latency, 5 cycles per k for 4 cycles of work)
    const int64_t m = rows * t / tiles, r = rows * (t + 1) / tiles - m;
    // the next panel's lines spread over this panel's tiles: tile t fetches its share
    const int64_t lo = lines * t / tiles;
    const int64_t share = std::max<int64_t>(lines * (t + 1) / tiles - lo, 1);
    const int64_t every = std::max<int64_t>(1, (K + share - 1) / share);
    const char* pf = next ? reinterpret_cast<const char*>(next) + lo * 64 : nullptr;
    const float* xm = x + m * K;
    float* ym = y + m * ldy;
    switch (r) {
      case 6: tile_avx2<6>(xm, K, p, K, ym, ldy, ncols, pf, every, s); break;
      case 5: tile_avx2<5>(xm, K, p, K, ym, ldy, ncols, pf, every, s); break;
      case 4: tile_avx2<4>(xm, K, p, K, ym, ldy, ncols, pf, every, s); break;
      case 3: tile_avx2<3>(xm, K, p, K, ym, ldy, ncols, pf, every, s); break;
      case 2: tile_avx2<2>(xm, K, p, K, ym, ldy, ncols, pf, every, s); break;
      default: tile_avx2<1>(xm, K, p, K, ym, ldy, ncols, pf, every, s); break;
    }
  }
}

// One row of x (batch-1 decoding) against G consecutive panels at once: 2G accumulators, so
// the FMA chains do not wait on each other (one panel's 2 chains wait 5 cycles per k) and G
// weight streams are in flight. 30m shapes, one row, 1 thread (AVX2-only EPYC): one panel
// at a time 9.8 ms, two 7.5, four 6.8 (lmforge's row-major one-row op 10.4 there).
template <int G, typename W>
LMF_AVX2 void row_avx2(const float* x, const W* p, int64_t K, float* y, int64_t ncols_last,
                       const float* s) {
  __m256 a[2 * G];
  for (int g = 0; g < 2 * G; ++g) a[g] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b = _mm256_broadcast_ss(x + k);
    for (int g = 0; g < G; ++g) {
      const W* w = p + g * K * NR + k * NR;
      a[2 * g] = _mm256_fmadd_ps(b, cols_lo(w), a[2 * g]);
      a[2 * g + 1] = _mm256_fmadd_ps(b, cols_hi(w), a[2 * g + 1]);
    }
  }
  for (int g = 0; g < G; ++g) {
    alignas(32) float buf[NR];
    _mm256_store_ps(buf, a[2 * g]);
    _mm256_store_ps(buf + 8, a[2 * g + 1]);
    const int64_t ncols = g == G - 1 ? ncols_last : NR;
    for (int64_t j = 0; j < ncols; ++j) y[g * NR + j] = s ? s[g * NR + j] * buf[j] : buf[j];
  }
}

bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

bool use_avx2(bool portable) {
#ifdef LMF_X86
  return !portable && cpu_has_avx2_fma();
#else
  (void)portable;
  return false;
#endif
}

// y [M, n] = x [M, K] against the panels (the op's work, also called by lmforge's fused
// decode-layer ops, kernels/decode_layer.cpp); `sp`: the n scales of int8 panels, else nullptr.
template <typename W>
void product(const float* xp, int64_t M, int64_t K, const W* pp, const float* sp, int64_t n,
             float* yp, bool avx2) {
  const int64_t P = (n + NR - 1) / NR;
#ifdef LMF_X86
  if (avx2 && M == 1) {  // groups of RG panels, then the last few one by one
    constexpr int64_t RG = 4;
    const int64_t groups = P / RG;
    at::parallel_for(0, groups + (P - groups * RG), 4, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t p = g < groups ? g * RG : groups * RG + (g - groups);
        const int64_t count = g < groups ? RG : 1;
        const int64_t last = std::min(NR, n - (p + count - 1) * NR);
        const float* s = sp ? sp + p * NR : nullptr;
        if (count == RG)
          row_avx2<RG>(xp, pp + p * K * NR, K, yp + p * NR, last, s);
        else
          row_avx2<1>(xp, pp + p * K * NR, K, yp + p * NR, last, s);
      }
    });
    return;
  }
#endif
  for (int64_t m0 = 0; m0 < M; m0 += MC) {
    const int64_t rows = std::min(MC, M - m0);
    at::parallel_for(0, P, 4, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const W* panel = pp + p * K * NR;
        float* yo = yp + m0 * n + p * NR;
        const int64_t ncols = std::min(NR, n - p * NR);
        const float* s = sp ? sp + p * NR : nullptr;
#ifdef LMF_X86
        if (avx2) {
          const W* next = p + 1 < p1 ? panel + K * NR : nullptr;
          panel_avx2(xp + m0 * K, rows, K, panel, yo, n, ncols, next, s);
          continue;
        }
#endif
        tile_portable(xp + m0 * K, K, rows, panel, K, yo, n, ncols, s);
      }
    });
  }
}

// Checks shared by both ops: x [M, K] fp32, panels [P, K, 16] of `dtype`, P panels hold n.
void check_operands(const char* op, const at::Tensor& x, const at::Tensor& panels, int64_t n,
                    at::ScalarType dtype) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(), op,
              ": x must be a 2-D fp32 CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(panels.dim() == 3 && panels.size(2) == NR && panels.scalar_type() == dtype &&
                  panels.is_contiguous(),
              op, ": panels must be contiguous ", dtype == at::kFloat ? "fp32" : "int8",
              " [P, K, 16], got ", panels.sizes(), " ", panels.scalar_type());
  const int64_t K = x.size(1), P = panels.size(0);
  TORCH_CHECK(panels.size(1) == K, op, ": x has ", K, " columns, the panels ", panels.size(1));
  TORCH_CHECK(n > (P - 1) * NR && n <= P * NR, op, ": ", P, " panels cannot hold ", n,
              " outputs");
}

at::Tensor panel_gemm(const at::Tensor& x, const at::Tensor& panels, int64_t n,
                      bool portable) {
  check_operands("panel_gemm", x, panels, n, at::kFloat);
  const int64_t M = x.size(0), K = x.size(1);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({M, n}, x.options());
  if (M == 0 || n == 0) return y;
  if (K == 0) return y.zero_();
  product<float>(xc.data_ptr<float>(), M, K, panels.data_ptr<float>(), nullptr, n,
                 y.data_ptr<float>(), use_avx2(portable));
  return y;
}

at::Tensor int8_panel_gemm(const at::Tensor& x, const at::Tensor& panels,
                           const at::Tensor& scales, int64_t n, bool portable) {
  check_operands("int8_panel_gemm", x, panels, n, at::kChar);
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == n && scales.scalar_type() == at::kFloat &&
                  scales.is_contiguous(),
              "int8_panel_gemm: scales must be contiguous fp32 [", n, "], got ", scales.sizes(),
              " ", scales.scalar_type());
  const int64_t M = x.size(0), K = x.size(1);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({M, n}, x.options());
  if (M == 0 || n == 0) return y;
  if (K == 0) return y.zero_();
  product<int8_t>(xc.data_ptr<float>(), M, K, panels.data_ptr<int8_t>(),
                  scales.data_ptr<float>(), n, y.data_ptr<float>(), use_avx2(portable));
  return y;
}

std::string panel_gemm_isa() { return use_avx2(false) ? "avx2" : "portable"; }

}  // namespace

namespace lmforge_panels {
// The panel product for lmforge's other C++ ops (declared where used): x [M, K] fp32, the
// panels of W [n, K] (`pack_panels`), y [M, n]; AVX2 + FMA where the CPU has it.
void product(const float* x, int64_t M, int64_t K, const float* panels, int64_t n, float* y) {
  ::product<float>(x, M, K, panels, nullptr, n, y, use_avx2(false));
}
// The same over int8 panels (`pack_int8_panels`) with their n fp32 scales.
void int8_product(const float* x, int64_t M, int64_t K, const int8_t* panels,
                  const float* scales, int64_t n, float* y) {
  ::product<int8_t>(x, M, K, panels, scales, n, y, use_avx2(false));
}
}  // namespace lmforge_panels

TORCH_LIBRARY_FRAGMENT(lmforge_ext, m) {
  m.def("panel_gemm(Tensor x, Tensor panels, int n, bool portable=False) -> Tensor");
  m.def(
      "int8_panel_gemm(Tensor x, Tensor panels, Tensor scales, int n, bool portable=False) -> "
      "Tensor");
  m.def("panel_gemm_isa() -> str", &panel_gemm_isa);
}

TORCH_LIBRARY_IMPL(lmforge_ext, CPU, m) {
  m.impl("panel_gemm", &panel_gemm);
  m.impl("int8_panel_gemm", &int8_panel_gemm);
}
