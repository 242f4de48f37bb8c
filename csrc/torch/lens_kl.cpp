// Fused linear-KL loss of the tuned lens on CPU: KL(p_final ‖ q_layer) per row and,
// when asked, its gradient with respect to the normalised residual, in one sweep over
// vocabulary tiles. Per token block the rows of every lens site and of the final
// layer are stacked, so each W tile is read once for all of them; the tile's logits
// live in a [rows x vocab_tile] buffer only. Memory is O(rows · d_model).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <vector>

#include "../core/kl_grad.h"
#include "../core/lens_epilogue.h"

namespace {

using fusedlens::SoftmaxState;

// Multiply row r of acc [rows, d] by factor[r] (the rescale of its running max).
void rescale_rows(float* acc, const float* factor, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    if (factor[r] == 1.f) continue;
    float* row = acc + r * d;
    const float f = factor[r];
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) row[k] *= f;
  }
}

struct Outputs {
  float* kl;     // [L, T]
  float* lse;    // [L, T]
  float* lse_f;  // [T]
  float* grad;   // [L, T, d] or null
};

// One block of n tokens: rows r = l * n + j (lens site l, token j), then L * n + j (final).
void sweep_block(const torch::Tensor& A, const torch::Tensor& w, const float* bias, float cap, int64_t L,
                 int64_t n, int64_t T, int64_t t0, int64_t vocab_tile, const Outputs& out) {
  const int64_t R = (L + 1) * n, lens_rows = L * n, V = w.size(0), d = w.size(1);
  const bool grad = out.grad != nullptr, capped = cap > 0.f;
  std::vector<float> z(R * vocab_tile), e(R * vocab_tile), eb(grad && capped ? lens_rows * vocab_tile : 0);
  std::vector<SoftmaxState> st(R);
  for (auto& s : st) s.reset();
  std::vector<float> wsum(lens_rows, 0.f), factor(R, 1.f), factor_b(lens_rows, 1.f);
  // a: Σ exp(z − m) c' W per lens row (and, without a cap, per final row: then it is b).
  const int64_t rows_a = capped ? lens_rows : R;
  torch::Tensor acc_a, acc_b;
  if (grad) {
    acc_a = torch::zeros({rows_a, d}, A.options());
    if (capped) acc_b = torch::zeros({lens_rows, d}, A.options());
  }
  for (int64_t v0 = 0; v0 < V; v0 += vocab_tile) {
    const int64_t width = std::min(vocab_tile, V - v0);
    const auto w_tile = w.narrow(0, v0, width);
    auto Z = torch::from_blob(z.data(), {R, width}, A.options());
    at::mm_out(Z, A, w_tile.t());
    for (int64_t r = 0; r < R; ++r)
      fusedlens::bias_and_cap(z.data() + r * width, bias ? bias + v0 : nullptr, cap, width);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t rf = lens_rows + j;
      factor[rf] = fusedlens::fold_softmax(st[rf], z.data() + rf * width, width, e.data() + rf * width);
    }
    for (int64_t r = 0; r < lens_rows; ++r) {
      const int64_t rf = lens_rows + r % n;
      const float* zr = z.data() + r * width;
      const float* ef = e.data() + rf * width;
      float* er = e.data() + r * width;
      factor[r] = fusedlens::fold_softmax(st[r], zr, width, er);
      wsum[r] = wsum[r] * factor[rf] + fusedlens::kl_tile_term(ef, z.data() + rf * width, zr, width);
      if (grad && capped) {
        fusedlens::times_cap_slope(ef, zr, cap, eb.data() + r * width, width);
        fusedlens::times_cap_slope(er, zr, cap, er, width);
        factor_b[r] = factor[rf];
      }
    }
    if (grad) {
      rescale_rows(acc_a.data_ptr<float>(), factor.data(), rows_a, d);
      acc_a.addmm_(torch::from_blob(e.data(), {rows_a, width}, A.options()), w_tile);
      if (capped) {
        rescale_rows(acc_b.data_ptr<float>(), factor_b.data(), lens_rows, d);
        acc_b.addmm_(torch::from_blob(eb.data(), {lens_rows, width}, A.options()), w_tile);
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) out.lse_f[t0 + j] = st[lens_rows + j].lse();
  for (int64_t r = 0; r < lens_rows; ++r) {
    const int64_t l = r / n, j = r % n, g = l * T + t0 + j;
    const SoftmaxState& f = st[lens_rows + j];
    const float lse = st[r].lse();
    out.lse[g] = lse;
    out.kl[g] = fusedlens::kl_from_sums(wsum[r], f.s, f.lse(), lse);
    if (!grad) continue;
    // ∂KL/∂x = a / s − b / s_f
    const float* a = acc_a.data_ptr<float>() + r * d;
    const float* b = capped ? acc_b.data_ptr<float>() + r * d : acc_a.data_ptr<float>() + (lens_rows + j) * d;
    const float inv_s = 1.f / st[r].s, inv_sf = 1.f / f.s;
    float* dst = out.grad + g * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) dst[k] = a[k] * inv_s - b[k] * inv_sf;
  }
}

}  // namespace

// xn [L, T, d] float32 normalised lens residuals; xf [T, d] float32 the final layer's;
// w [V, d] float32. Returns kl [L, T], lse [L, T], lse_final [T] and, with with_grad,
// dKL/dxn [L, T, d] (else an empty tensor).
std::vector<torch::Tensor> lens_kl(const torch::Tensor& xn_in, const torch::Tensor& xf_in, const torch::Tensor& w_in,
                                   const c10::optional<torch::Tensor>& bias_in, double softcap, bool with_grad,
                                   int64_t token_block, int64_t vocab_tile) {
  TORCH_CHECK(xn_in.dim() == 3 && xf_in.dim() == 2 && w_in.dim() == 2, "lens_kl: xn [L, T, d], xf [T, d], w [V, d]");
  TORCH_CHECK(xn_in.scalar_type() == torch::kFloat32 && xf_in.scalar_type() == torch::kFloat32 &&
                  w_in.scalar_type() == torch::kFloat32,
              "lens_kl: float32 xn, xf and w expected");
  TORCH_CHECK(xn_in.device().is_cpu() && xf_in.device().is_cpu() && w_in.device().is_cpu(), "lens_kl: CPU tensors");
  const auto xn = xn_in.contiguous();
  const auto xf = xf_in.contiguous();
  const auto w = w_in.contiguous();
  const int64_t L = xn.size(0), T = xn.size(1), d = xn.size(2);
  TORCH_CHECK(L >= 1 && T >= 1 && d >= 1 && w.size(0) >= 1, "lens_kl: empty input");
  TORCH_CHECK(xf.size(0) == T && xf.size(1) == d && w.size(1) == d, "lens_kl: shape mismatch");
  torch::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->to(torch::kFloat32).contiguous();
    TORCH_CHECK(bias.numel() == w.size(0), "lens_kl: bias must have one entry per vocabulary row");
  }
  const float cap = softcap > 0 ? static_cast<float>(softcap) : 0.f;
  const int64_t tb = std::max<int64_t>(1, token_block), tile = std::max<int64_t>(16, vocab_tile);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto kl = torch::empty({L, T}, f32), lse = torch::empty({L, T}, f32), lse_f = torch::empty({T}, f32);
  auto grad = with_grad ? torch::empty({L, T, d}, f32) : torch::empty({0}, f32);
  const Outputs out{kl.data_ptr<float>(), lse.data_ptr<float>(), lse_f.data_ptr<float>(),
                    with_grad ? grad.data_ptr<float>() : nullptr};
  const float* bias_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
  at::parallel_for(0, (T + tb - 1) / tb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * tb, n = std::min(tb, T - t0);
      const auto A = torch::cat({xn.narrow(1, t0, n).reshape({L * n, d}), xf.narrow(0, t0, n)}, 0).contiguous();
      sweep_block(A, w, bias_ptr, cap, L, n, T, t0, tile, out);
    }
  });
  return {kl, lse, lse_f, grad};
}
