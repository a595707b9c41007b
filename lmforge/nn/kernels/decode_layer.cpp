// One decoder layer's work around its attention as two ops, and a whole decode step's
// layers as one (decode_layers, with the K/V writes and the paged attention), fp32, so the
// eager engine's step does not pay ~35 PyTorch ops (and their Python) per layer
// (lmforge.nn.decode_layer); every row is its own token (with its own RoPE position):
//   decode_pre:  h = RMSNorm(x) (Zhang & Sennrich 2019: x / sqrt(mean(x^2) + eps) * w),
//                qkv = h W_qkv^T (+ b), RoPE on the q and k heads in the half-split layout
//                (Su et al. 2021, eq. 34: x cos + rotate_half(x) sin)
//   decode_post: x' = x + a W_o^T (+ b); h = RMSNorm(x'); [g; u] = h W_gu^T (+ b);
//                x'' = x' + (silu(g) * u) W_down^T (+ b)       (SwiGLU, Shazeer 2020)
// Each projection's weight is the runner's fp32 panel copy (lmforge's panel product,
// kernels/panel_gemm.cpp), an int8 layer's int8 panels, or its codes [n, K] (the one-row loop
// of kernels/gemv.cpp, row by row), the int8 ones with fp32 scales [n] (y = s * (q x)); the
// rest is loops over rows (over torch's threads for a prefill's many rows).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace lmforge_panels {
void product(const float* x, int64_t M, int64_t K, const float* panels, int64_t n, float* y);
void int8_product(const float* x, int64_t M, int64_t K, const int8_t* panels,
                  const float* scales, int64_t n, float* y);
}
namespace lmforge_attention {
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                        const at::Tensor& tables, const at::Tensor& lengths, int64_t block_size,
                        double scale, int64_t window);
}
namespace lmforge_math {
void exp_nonpositive_n(const float* x, float* out, int64_t n);
}
namespace lmforge_gemv {
void int8_product(const float* x, const int8_t* q, const float* s, int64_t N, int64_t K,
                  float* y);
}

namespace {

constexpr int64_t NR = 16;  // the panels' width (kernels/panel_gemm.cpp)

// x / sqrt(mean(x^2) + eps) * w, the mean in double (one row: the cost is nothing).
void rms_norm(const float* x, const float* w, double eps, int64_t n, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

void check_row(const at::Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous() &&
                  t.numel() == n,
              "decode layer op: ", name, " must be a contiguous fp32 CPU tensor of ", n,
              " values, got ", t.sizes(), " ", t.scalar_type());
}

void check_panels(const at::Tensor& p, int64_t k, int64_t n, const char* name) {
  TORCH_CHECK(p.dim() == 3 && p.size(2) == NR && p.size(1) == k &&
                  p.size(0) == (n + NR - 1) / NR && p.scalar_type() == at::kFloat &&
                  p.is_contiguous(),
              "decode layer op: ", name, " must be the contiguous fp32 panels [", (n + NR - 1) / NR,
              ", ", k, ", 16] of a [", n, ", ", k, "] weight, got ", p.sizes());
}

// A projection's weight W [n, K]: its fp32 panels, int8 panels with one scale per output, or
// int8 codes [n, K] with one scale per output.
struct Weight {
  const float* panels = nullptr;
  const int8_t* int8_panels = nullptr;
  const int8_t* codes = nullptr;
  const float* scales = nullptr;
};

Weight check_weight(const at::Tensor& w, const c10::optional<at::Tensor>& scale, int64_t k,
                    int64_t n, const char* name) {
  Weight out;
  if (w.scalar_type() != at::kChar) {
    TORCH_CHECK(!scale.has_value(), "decode layer op: ", name,
                " are fp32 panels, which take no scales");
    check_panels(w, k, n, name);
    out.panels = w.data_ptr<float>();
    return out;
  }
  TORCH_CHECK(scale.has_value(), "decode layer op: ", name, " are int8: give their scales");
  check_row(*scale, n, "the int8 scales");
  out.scales = scale->data_ptr<float>();
  if (w.dim() == 3) {  // int8 panels [ceil(n / 16), k, 16]
    TORCH_CHECK(w.size(2) == NR && w.size(1) == k && w.size(0) == (n + NR - 1) / NR &&
                    w.device().is_cpu() && w.is_contiguous(),
                "decode layer op: ", name, " must be the contiguous int8 panels [",
                (n + NR - 1) / NR, ", ", k, ", 16] of a [", n, ", ", k, "] weight, got ",
                w.sizes());
    out.int8_panels = w.data_ptr<int8_t>();
    return out;
  }
  TORCH_CHECK(w.dim() == 2 && w.size(0) == n && w.size(1) == k && w.device().is_cpu() &&
                  w.is_contiguous(),
              "decode layer op: ", name, " must be contiguous int8 codes [", n, ", ", k,
              "], got ", w.sizes());
  out.codes = w.data_ptr<int8_t>();
  return out;
}

// y [M, n] = x [M, K] W^T
void product(const float* x, int64_t M, int64_t K, const Weight& w, int64_t n, float* y) {
  if (w.panels != nullptr) {
    lmforge_panels::product(x, M, K, w.panels, n, y);
    return;
  }
  if (w.int8_panels != nullptr) {
    lmforge_panels::int8_product(x, M, K, w.int8_panels, w.scales, n, y);
    return;
  }
  for (int64_t r = 0; r < M; ++r)  // one row at a time: the codes streamed M times
    lmforge_gemv::int8_product(x + r * K, w.codes, w.scales, n, K, y + r * n);
}

// out = silu(g) * u = g sigmoid(g) u, sigmoid(g) = 1 / (1 + e) for g >= 0 and e / (1 + e)
// otherwise, e = exp(-|g|) (never overflows) by the vectorised exp of
// kernels/paged_attention.cpp (a scalar std::exp per element had cost ≈ 1 ms of a 16-row
// 30m decode step); `e` is scratch of n values (it may be `out` itself).
void silu_mul(const float* g, const float* u, int64_t n, float* e, float* out) {
  for (int64_t i = 0; i < n; ++i) e[i] = -std::abs(g[i]);
  lmforge_math::exp_nonpositive_n(e, e, n);
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] * ((g[i] >= 0.f ? 1.f : e[i]) / (1.f + e[i])) * u[i];
}

// A bias of n values, or nullptr for none.
const float* check_bias(const c10::optional<at::Tensor>& b, int64_t n, const char* name) {
  if (!b.has_value()) return nullptr;
  check_row(*b, n, name);
  return b->data_ptr<float>();
}

void add_bias(const float* b, int64_t n, float* y) {
  if (b == nullptr) return;
  for (int64_t i = 0; i < n; ++i) y[i] += b[i];
}

void check_rows(const at::Tensor& t, int64_t m, int64_t n, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == m && t.size(1) == n && t.scalar_type() == at::kFloat &&
                  t.device().is_cpu() && t.is_contiguous(),
              "decode layer op: ", name, " must be a contiguous fp32 CPU tensor [", m, ", ", n,
              "], got ", t.sizes(), " ", t.scalar_type());
}

// A layer's weights around its attention, checked (decode_pre's and decode_post's inputs).
struct Layer {
  const float *norm1, *norm2;
  double eps1, eps2;
  Weight qkv, o, gate_up, down;
  const float *qkv_bias, *o_bias, *gate_up_bias, *down_bias;
};

// Per-thread scratch of at least n floats in one of a few slots, keeping its pages between
// calls (a fresh zero-filled std::vector per call paid a memset and page faults on every
// call: ≈ 20 MB per layer of a 1,024-token prefill). Slots: 0 pre's norm, 1-4 post's norm,
// gate/up, SwiGLU and down buffers, 5 decode_layers' q/k/v rows.
float* scratch(int slot, int64_t n) {
  thread_local std::vector<float> buffers[6];
  std::vector<float>& b = buffers[slot];
  if (b.size() < static_cast<size_t>(n)) b.resize(static_cast<size_t>(n));
  return b.data();
}

// f(r) for the rows r of [0, M): inline for a decode step's few rows, over torch's intra-op
// threads in chunks of kRowGrain rows for a prefill's many (rows are independent).
constexpr int64_t kRowGrain = 64;
template <typename F>
void each_row(int64_t M, const F& f) {
  if (M <= kRowGrain) {
    for (int64_t r = 0; r < M; ++r) f(r);
    return;
  }
  at::parallel_for(0, M, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) f(r);
  });
}

// y [M, n] = RoPE(RMSNorm(x) W_qkv^T + b) for x [M, H]; the first `rotated` heads of each
// row rotated by the row's cos / sin [M, head_dim].
void pre_rows(const float* x, int64_t M, int64_t H, const Layer& l, int64_t n, const float* cos,
              const float* sin, int64_t rotated, int64_t head_dim, float* y) {
  float* h = scratch(0, M * H);
  each_row(M, [&](int64_t r) { rms_norm(x + r * H, l.norm1, l.eps1, H, h + r * H); });
  product(h, M, H, l.qkv, n, y);
  const int64_t half = head_dim / 2;
  each_row(M, [&](int64_t row) {
    float* yr = y + row * n;
    add_bias(l.qkv_bias, n, yr);
    const float* c = cos + row * head_dim;
    const float* s = sin + row * head_dim;
    for (int64_t r = 0; r < rotated; ++r) {  // x cos + rotate_half(x) sin, rotate_half = (-x2, x1)
      float* v = yr + r * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] + (-x2) * s[i];
        v[i + half] = x2 * c[i + half] + x1 * s[i + half];
      }
    }
  });
}

// out [M, H]: x' = x + attn W_o^T (+ b), then x' + SwiGLU(RMSNorm(x')) W_down^T (+ b).
void post_rows(const float* x, const float* attn, int64_t M, int64_t H, int64_t A, const Layer& l,
               int64_t inter, float* out) {
  product(attn, M, A, l.o, H, out);
  float *h = scratch(1, M * H), *gu = scratch(2, M * 2 * inter), *m = scratch(3, M * inter),
        *d = scratch(4, M * H);
  each_row(M, [&](int64_t r) {
    float* xr = out + r * H;
    add_bias(l.o_bias, H, xr);
    for (int64_t i = 0; i < H; ++i) xr[i] += x[r * H + i];  // the residual: x' = x + o
    rms_norm(xr, l.norm2, l.eps2, H, h + r * H);
  });
  product(h, M, H, l.gate_up, 2 * inter, gu);
  each_row(M, [&](int64_t r) {
    float* g = gu + r * 2 * inter;
    add_bias(l.gate_up_bias, 2 * inter, g);
    silu_mul(g, g + inter, inter, m + r * inter, m + r * inter);  // its own row as scratch
  });
  product(m, M, inter, l.down, H, d);
  each_row(M, [&](int64_t r) {
    float* dr = d + r * H;
    add_bias(l.down_bias, H, dr);
    for (int64_t i = 0; i < H; ++i) out[r * H + i] += dr[i];
  });
}

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be [tokens, hidden], got ", x.sizes());
  check_rows(x, x.size(0), x.size(1), "x");
}

void check_rope(const at::Tensor& cos, const at::Tensor& sin, int64_t M, int64_t rotated,
                int64_t head_dim, int64_t n) {
  check_rows(cos, M, head_dim, "cos");
  check_rows(sin, M, head_dim, "sin");
  TORCH_CHECK(head_dim % 2 == 0 && rotated * head_dim <= n,
              "decode_pre: ", rotated, " rotated heads of ", head_dim, " do not fit ", n);
}

at::Tensor decode_pre(const at::Tensor& x, const at::Tensor& norm, double eps,
                      const at::Tensor& weight, const c10::optional<at::Tensor>& scale, int64_t n,
                      const c10::optional<at::Tensor>& bias,
                      const at::Tensor& cos, const at::Tensor& sin, int64_t rotated,
                      int64_t head_dim) {
  check_x(x, "decode_pre");
  const int64_t M = x.size(0), H = x.size(1);
  check_row(norm, H, "the norm's weight");
  Layer l{};
  l.norm1 = norm.data_ptr<float>();
  l.eps1 = eps;
  l.qkv = check_weight(weight, scale, H, n, "the q/k/v weights");
  l.qkv_bias = check_bias(bias, n, "the q/k/v bias");
  check_rope(cos, sin, M, rotated, head_dim, n);
  at::Tensor y = at::empty({M, n}, x.options());
  pre_rows(x.data_ptr<float>(), M, H, l, n, cos.data_ptr<float>(), sin.data_ptr<float>(), rotated,
           head_dim, y.data_ptr<float>());
  return y;
}

// The post-attention half of `l` checked: attention width A, hidden H.
void check_post(Layer& l, int64_t H, int64_t A, int64_t inter, const at::Tensor& norm, double eps,
                const at::Tensor& o, const c10::optional<at::Tensor>& o_scale,
                const c10::optional<at::Tensor>& o_bias, const at::Tensor& gate_up,
                const c10::optional<at::Tensor>& gate_up_scale,
                const c10::optional<at::Tensor>& gate_up_bias, const at::Tensor& down,
                const c10::optional<at::Tensor>& down_scale,
                const c10::optional<at::Tensor>& down_bias) {
  check_row(norm, H, "the norm's weight");
  l.norm2 = norm.data_ptr<float>();
  l.eps2 = eps;
  l.o = check_weight(o, o_scale, A, H, "the o weights");
  l.gate_up = check_weight(gate_up, gate_up_scale, H, 2 * inter, "the gate/up weights");
  l.down = check_weight(down, down_scale, inter, H, "the down weights");
  l.o_bias = check_bias(o_bias, H, "the o bias");
  l.gate_up_bias = check_bias(gate_up_bias, 2 * inter, "the gate/up bias");
  l.down_bias = check_bias(down_bias, H, "the down bias");
}

at::Tensor decode_post(const at::Tensor& x, const at::Tensor& attn, const at::Tensor& o_weight,
                       const c10::optional<at::Tensor>& o_scale,
                       const c10::optional<at::Tensor>& o_bias, const at::Tensor& norm,
                       double eps, const at::Tensor& gate_up_weight,
                       const c10::optional<at::Tensor>& gate_up_scale,
                       const c10::optional<at::Tensor>& gate_up_bias, int64_t inter,
                       const at::Tensor& down_weight, const c10::optional<at::Tensor>& down_scale,
                       const c10::optional<at::Tensor>& down_bias) {
  TORCH_CHECK(x.dim() == 2 && attn.dim() == 2,
              "decode_post: x and attn must be [tokens, features], got ", x.sizes(), " and ",
              attn.sizes());
  const int64_t M = x.size(0), H = x.size(1), A = attn.size(1);
  check_rows(x, M, H, "x");
  check_rows(attn, M, A, "the attention output");
  Layer l{};
  check_post(l, H, A, inter, norm, eps, o_weight, o_scale, o_bias, gate_up_weight, gate_up_scale,
             gate_up_bias, down_weight, down_scale, down_bias);
  at::Tensor out = at::empty({M, H}, x.options());
  post_rows(x.data_ptr<float>(), attn.data_ptr<float>(), M, H, A, l, inter, out.data_ptr<float>());
  return out;
}

#if defined(__x86_64__) && defined(__GNUC__)
// fp32 -> fp16 eight at a time with F16C (round to nearest even, as c10::Half): the multiple
// of 8 it covered (a scalar c10::Half per element: 0.5-3 % slower 16-request 30m runs).
__attribute__((target("avx,f16c"))) int64_t to_half_f16c(const float* src, c10::Half* dst,
                                                        int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  return i;
}

bool cpu_has_f16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif

// n values of `src` into `cache` (fp32, or rounded to fp16 / bf16 as Tensor.to rounds them)
// from element `at` on.
void store_kv(const at::Tensor& cache, int64_t at, const float* src, int64_t n) {
  switch (cache.scalar_type()) {
    case at::kHalf: {
      c10::Half* dst = static_cast<c10::Half*>(cache.data_ptr()) + at;
      int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
      static const bool f16c = cpu_has_f16c();
      if (f16c) i = to_half_f16c(src, dst, n);
#endif
      for (; i < n; ++i) dst[i] = c10::Half(src[i]);
      return;
    }
    case at::kBFloat16: {
      c10::BFloat16* dst = static_cast<c10::BFloat16*>(cache.data_ptr()) + at;
      for (int64_t i = 0; i < n; ++i) dst[i] = c10::BFloat16(src[i]);
      return;
    }
    default:
      std::memcpy(static_cast<float*>(cache.data_ptr()) + at, src,
                  static_cast<size_t>(n) * sizeof(float));
  }
}

// Every layer of a decode step in one call: per layer, `decode_pre`, this step's k / v rows
// written into their cache slots (as `PagedBatch.attend`'s index_copy_), the paged decode
// attention over each row's blocks (kernels/paged_attention.cpp), `decode_post`. Layer l's
// norms are norms[2l], norms[2l + 1] (eps likewise), its projections weights[4l + j] with
// scales / biases at the same index (j: q/k/v, o, gate/up, down), its window windows[l]
// (< 0: none). Each row is a token of a sequence at its own visible length (its K/V written
// before the attention reads the cache). `keep` (int64 row indices): after the last layer's
// K/V writes, only these rows go on (the attention, o, the MLP) and the result is theirs,
// [K, H] — the other rows' last-layer outputs feed nothing (llama.cpp skips them too).
at::Tensor decode_layers(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                         int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t inter,
                         at::TensorList norms, at::ArrayRef<double> eps, at::TensorList weights,
                         const c10::List<c10::optional<at::Tensor>>& scales,
                         const c10::List<c10::optional<at::Tensor>>& biases,
                         at::TensorList keys, at::TensorList values, const at::Tensor& slots,
                         const at::Tensor& tables, const at::Tensor& lengths, int64_t block_size,
                         double scale, at::IntArrayRef windows,
                         const c10::optional<at::Tensor>& final_norm, double final_eps,
                         const c10::optional<at::Tensor>& keep) {
  check_x(x, "decode_layers");
  const int64_t M = x.size(0), H = x.size(1), L = static_cast<int64_t>(keys.size());
  const int64_t n = (heads + 2 * kv_heads) * head_dim, A = heads * head_dim;
  TORCH_CHECK(L > 0 && static_cast<int64_t>(values.size()) == L &&
                  static_cast<int64_t>(norms.size()) == 2 * L &&
                  static_cast<int64_t>(eps.size()) == 2 * L &&
                  static_cast<int64_t>(weights.size()) == 4 * L &&
                  static_cast<int64_t>(scales.size()) == 4 * L &&
                  static_cast<int64_t>(biases.size()) == 4 * L &&
                  static_cast<int64_t>(windows.size()) == L,
              "decode_layers: for ", L, " layers give 2 norms and eps, 4 weights, scales and "
              "biases, one window each");
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "decode_layers: ", heads,
              " query heads do not share ", kv_heads, " K/V heads evenly");
  check_rope(cos, sin, M, heads + kv_heads, head_dim, n);
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.size(0) == M &&
                  slots.is_contiguous(),
              "decode_layers: slots must be contiguous int64 [", M, "], got ", slots.sizes());
  std::vector<Layer> layers(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) {
    Layer& l = layers[static_cast<size_t>(i)];
    const at::Tensor &k = keys[i], &v = values[i];
    const auto kt = keys[0].scalar_type();
    TORCH_CHECK(k.dim() == 3 && k.size(1) == kv_heads && k.size(2) == head_dim &&
                    v.sizes() == k.sizes() && k.scalar_type() == kt && v.scalar_type() == kt &&
                    (kt == at::kFloat || kt == at::kHalf || kt == at::kBFloat16) &&
                    k.is_contiguous() && v.is_contiguous(),
                "decode_layers: layer ", i, "'s keys and values must be contiguous fp32, fp16 or "
                "bf16 [slots, ", kv_heads, ", ", head_dim, "] (all layers one dtype), got ",
                k.sizes(), " ", k.scalar_type(), " and ", v.sizes(), " ", v.scalar_type());
    const auto at = [&](int64_t j) { return static_cast<size_t>(4 * i + j); };
    check_row(norms[2 * i], H, "the norm's weight");
    l.norm1 = norms[2 * i].data_ptr<float>();
    l.eps1 = eps[2 * i];
    l.qkv = check_weight(weights[at(0)], scales.get(at(0)), H, n, "the q/k/v weights");
    l.qkv_bias = check_bias(biases.get(at(0)), n, "the q/k/v bias");
    check_post(l, H, A, inter, norms[2 * i + 1], eps[2 * i + 1], weights[at(1)], scales.get(at(1)),
               biases.get(at(1)), weights[at(2)], scales.get(at(2)), biases.get(at(2)),
               weights[at(3)], scales.get(at(3)), biases.get(at(3)));
  }
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t capacity = keys[0].size(0), kv = kv_heads * head_dim;
  for (int64_t r = 0; r < M; ++r)
    TORCH_CHECK(sp[r] >= 0 && sp[r] < capacity, "decode_layers: slot ", sp[r], " of row ", r,
                " is outside the cache's ", capacity, " slots");
  const int64_t* kept = nullptr;
  int64_t K = M;
  if (keep.has_value()) {
    TORCH_CHECK(keep->scalar_type() == at::kLong && keep->dim() == 1 && keep->is_contiguous(),
                "decode_layers: keep must be contiguous int64 row indices, got ", keep->sizes(),
                " ", keep->scalar_type());
    kept = keep->data_ptr<int64_t>();
    K = keep->size(0);
    for (int64_t j = 0; j < K; ++j)
      TORCH_CHECK(kept[j] >= 0 && kept[j] < M, "decode_layers: keep[", j, "] = ", kept[j],
                  " is not one of the ", M, " rows");
  }
  at::Tensor cur = x, q = at::empty({M, heads, head_dim}, x.options());
  float* qkv = scratch(5, M * n);
  for (int64_t i = 0; i < L; ++i) {
    const Layer& l = layers[static_cast<size_t>(i)];
    pre_rows(cur.data_ptr<float>(), M, H, l, n, cos.data_ptr<float>(), sin.data_ptr<float>(),
             heads + kv_heads, head_dim, qkv);
    float* qp = q.data_ptr<float>();
    for (int64_t r = 0; r < M; ++r) {
      const float* row = qkv + r * n;
      std::memcpy(qp + r * A, row, static_cast<size_t>(A) * sizeof(float));
      store_kv(keys[i], sp[r] * kv, row + A, kv);
      store_kv(values[i], sp[r] * kv, row + A + kv, kv);
    }
    at::Tensor qi = q, ti = tables, li = lengths;
    if (kept != nullptr && i == L - 1) {  // the kept rows alone from here on
      const int64_t W = tables.size(1);
      qi = at::empty({K, heads, head_dim}, x.options());
      ti = at::empty({K, W}, tables.options());
      li = at::empty({K}, lengths.options());
      at::Tensor kept_x = at::empty({K, H}, x.options());
      for (int64_t j = 0; j < K; ++j) {
        const int64_t r = kept[j];
        std::memcpy(qi.data_ptr<float>() + j * A, qp + r * A,
                    static_cast<size_t>(A) * sizeof(float));
        std::memcpy(ti.data_ptr<int64_t>() + j * W, tables.data_ptr<int64_t>() + r * W,
                    static_cast<size_t>(W) * sizeof(int64_t));
        li.data_ptr<int64_t>()[j] = lengths.data_ptr<int64_t>()[r];
        std::memcpy(kept_x.data_ptr<float>() + j * H, cur.data_ptr<float>() + r * H,
                    static_cast<size_t>(H) * sizeof(float));
      }
      cur = kept_x;
    }
    const int64_t rows = qi.size(0);
    const at::Tensor attn = lmforge_attention::paged_decode(qi, keys[i], values[i], ti, li,
                                                            block_size, scale, windows[i]);
    at::Tensor out = at::empty({rows, H}, x.options());
    post_rows(cur.data_ptr<float>(), attn.data_ptr<float>(), rows, H, A, l, inter,
              out.data_ptr<float>());
    cur = out;
  }
  if (final_norm.has_value()) {  // the model's last RMSNorm, in place on our own output
    check_row(*final_norm, H, "the final norm's weight");
    float* cp = cur.data_ptr<float>();
    const float* w = final_norm->data_ptr<float>();
    std::vector<float> row(static_cast<size_t>(H));
    for (int64_t r = 0; r < cur.size(0); ++r) {
      rms_norm(cp + r * H, w, final_eps, H, row.data());
      std::memcpy(cp + r * H, row.data(), static_cast<size_t>(H) * sizeof(float));
    }
  }
  return cur;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge_ext, m) {
  m.def(
      "decode_pre(Tensor x, Tensor norm, float eps, Tensor weight, Tensor? scale, int n, "
      "Tensor? bias, Tensor cos, Tensor sin, int rotated, int head_dim) -> Tensor");
  m.def(
      "decode_post(Tensor x, Tensor attn, Tensor o_weight, Tensor? o_scale, Tensor? o_bias, "
      "Tensor norm, float eps, Tensor gate_up_weight, Tensor? gate_up_scale, "
      "Tensor? gate_up_bias, int inter, Tensor down_weight, Tensor? down_scale, "
      "Tensor? down_bias) -> Tensor");
  m.def(
      "decode_layers(Tensor x, Tensor cos, Tensor sin, int heads, int kv_heads, int head_dim, "
      "int inter, Tensor[] norms, float[] eps, Tensor[] weights, Tensor?[] scales, "
      "Tensor?[] biases, Tensor(a!)[] keys, Tensor(b!)[] values, Tensor slots, Tensor tables, "
      "Tensor lengths, int block_size, float scale, int[] windows, Tensor? final_norm=None, "
      "float final_eps=0.0, Tensor? keep=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge_ext, CPU, m) {
  m.impl("decode_pre", &decode_pre);
  m.impl("decode_post", &decode_post);
  m.impl("decode_layers", &decode_layers);
}
