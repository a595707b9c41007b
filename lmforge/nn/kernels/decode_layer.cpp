// One decoder layer's work around its attention, for the few tokens of a decode step (one
// per sequence), fp32, in two ops, so the eager engine's step does not pay ~35 PyTorch ops
// (and their Python) per layer (lmforge.nn.decode_layer); every row is its own token:
//   decode_pre:  h = RMSNorm(x) (Zhang & Sennrich 2019: x / sqrt(mean(x^2) + eps) * w),
//                qkv = h W_qkv^T (+ b), RoPE on the q and k heads in the half-split layout
//                (Su et al. 2021, eq. 34: x cos + rotate_half(x) sin)
//   decode_post: x' = x + a W_o^T (+ b); h = RMSNorm(x'); [g; u] = h W_gu^T (+ b);
//                x'' = x' + (silu(g) * u) W_down^T (+ b)       (SwiGLU, Shazeer 2020)
// The projections are lmforge's panel products (kernels/panel_gemm.cpp) over the runner's
// panel copies; the rest is plain loops over one row.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace lmforge_panels {
void product(const float* x, int64_t M, int64_t K, const float* panels, int64_t n, float* y);
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

void add_bias(const c10::optional<at::Tensor>& b, int64_t n, float* y, const char* name) {
  if (!b.has_value()) return;
  check_row(*b, n, name);
  const float* bp = b->data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) y[i] += bp[i];
}

void check_rows(const at::Tensor& t, int64_t m, int64_t n, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == m && t.size(1) == n && t.scalar_type() == at::kFloat &&
                  t.device().is_cpu() && t.is_contiguous(),
              "decode layer op: ", name, " must be a contiguous fp32 CPU tensor [", m, ", ", n,
              "], got ", t.sizes(), " ", t.scalar_type());
}

at::Tensor decode_pre(const at::Tensor& x, const at::Tensor& norm, double eps,
                      const at::Tensor& panels, int64_t n, const c10::optional<at::Tensor>& bias,
                      const at::Tensor& cos, const at::Tensor& sin, int64_t rotated,
                      int64_t head_dim) {
  TORCH_CHECK(x.dim() == 2, "decode_pre: x must be [tokens, hidden], got ", x.sizes());
  const int64_t M = x.size(0), H = x.size(1);
  check_rows(x, M, H, "x");
  check_row(norm, H, "the norm's weight");
  check_panels(panels, H, n, "the q/k/v panels");
  check_rows(cos, M, head_dim, "cos");
  check_rows(sin, M, head_dim, "sin");
  TORCH_CHECK(head_dim % 2 == 0 && rotated * head_dim <= n,
              "decode_pre: ", rotated, " rotated heads of ", head_dim, " do not fit ", n);
  std::vector<float> h(static_cast<size_t>(M * H));
  const float* xp = x.data_ptr<float>();
  for (int64_t r = 0; r < M; ++r)
    rms_norm(xp + r * H, norm.data_ptr<float>(), eps, H, h.data() + r * H);
  at::Tensor y = at::empty({M, n}, x.options());
  float* yp = y.data_ptr<float>();
  lmforge_panels::product(h.data(), M, H, panels.data_ptr<float>(), n, yp);
  const int64_t half = head_dim / 2;
  for (int64_t row = 0; row < M; ++row) {
    float* yr = yp + row * n;
    add_bias(bias, n, yr, "the q/k/v bias");
    const float* c = cos.data_ptr<float>() + row * head_dim;
    const float* s = sin.data_ptr<float>() + row * head_dim;
    for (int64_t r = 0; r < rotated; ++r) {  // x cos + rotate_half(x) sin, rotate_half = (-x2, x1)
      float* v = yr + r * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] + (-x2) * s[i];
        v[i + half] = x2 * c[i + half] + x1 * s[i + half];
      }
    }
  }
  return y;
}

at::Tensor decode_post(const at::Tensor& x, const at::Tensor& attn, const at::Tensor& o_panels,
                       const c10::optional<at::Tensor>& o_bias, const at::Tensor& norm,
                       double eps, const at::Tensor& gate_up_panels,
                       const c10::optional<at::Tensor>& gate_up_bias, int64_t inter,
                       const at::Tensor& down_panels,
                       const c10::optional<at::Tensor>& down_bias) {
  TORCH_CHECK(x.dim() == 2 && attn.dim() == 2,
              "decode_post: x and attn must be [tokens, features], got ", x.sizes(), " and ",
              attn.sizes());
  const int64_t M = x.size(0), H = x.size(1), A = attn.size(1);
  check_rows(x, M, H, "x");
  check_rows(attn, M, A, "the attention output");
  check_row(norm, H, "the norm's weight");
  check_panels(o_panels, A, H, "the o panels");
  check_panels(gate_up_panels, H, 2 * inter, "the gate/up panels");
  check_panels(down_panels, inter, H, "the down panels");
  at::Tensor out = at::empty({M, H}, x.options());
  float* xo = out.data_ptr<float>();
  lmforge_panels::product(attn.data_ptr<float>(), M, A, o_panels.data_ptr<float>(), H, xo);
  const float* xp = x.data_ptr<float>();
  std::vector<float> h(static_cast<size_t>(M * H)), gu(static_cast<size_t>(M * 2 * inter)),
      m(static_cast<size_t>(M * inter)), d(static_cast<size_t>(M * H));
  for (int64_t r = 0; r < M; ++r) {
    float* xr = xo + r * H;
    add_bias(o_bias, H, xr, "the o bias");
    for (int64_t i = 0; i < H; ++i) xr[i] += xp[r * H + i];  // the residual: x' = x + o
    rms_norm(xr, norm.data_ptr<float>(), eps, H, h.data() + r * H);
  }
  lmforge_panels::product(h.data(), M, H, gate_up_panels.data_ptr<float>(), 2 * inter,
                          gu.data());
  for (int64_t r = 0; r < M; ++r) {
    float* g = gu.data() + r * 2 * inter;
    add_bias(gate_up_bias, 2 * inter, g, "the gate/up bias");
    for (int64_t i = 0; i < inter; ++i)  // silu(g) * u
      m[r * inter + i] = g[i] / (1.f + std::exp(-g[i])) * g[inter + i];
  }
  lmforge_panels::product(m.data(), M, inter, down_panels.data_ptr<float>(), H, d.data());
  for (int64_t r = 0; r < M; ++r) {
    float* dr = d.data() + r * H;
    add_bias(down_bias, H, dr, "the down bias");
    for (int64_t i = 0; i < H; ++i) xo[r * H + i] += dr[i];
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge_ext, m) {
  m.def(
      "decode_pre(Tensor x, Tensor norm, float eps, Tensor panels, int n, Tensor? bias, "
      "Tensor cos, Tensor sin, int rotated, int head_dim) -> Tensor");
  m.def(
      "decode_post(Tensor x, Tensor attn, Tensor o_panels, Tensor? o_bias, Tensor norm, "
      "float eps, Tensor gate_up_panels, Tensor? gate_up_bias, int inter, Tensor down_panels, "
      "Tensor? down_bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge_ext, CPU, m) {
  m.impl("decode_pre", &decode_pre);
  m.impl("decode_post", &decode_post);
}
