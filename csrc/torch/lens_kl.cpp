// Fused linear-KL loss of the tuned lens on CPU: KL(p_final ‖ q_layer) per row and,
// when asked, its gradient with respect to the normalised residual, in one sweep over
// vocabulary tiles. Per token block the rows of every lens site and of the final
// layer are stacked, so each W tile is read once for all of them; the tile's logits
// live in a [rows x vocab_tile] buffer only. Memory is O(rows · d_model).
//
// Two drivers share the per-tile numerics (fold_tile, finish_block):
//  - fp32: each token block sweeps the vocabulary on its own thread with ATen GEMMs;
//  - bf16: the operands are rounded to bf16 and multiplied with vdpbf16ps
//    (core/bf16_gemm). The vocabulary tile is the outer loop so that each W tile is
//    packed once, in both layouts the two GEMMs need, and shared by every block.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <vector>

#include "../core/aligned.h"
#include "../core/bf16_gemm.h"
#include "../core/kl_grad.h"
#include "../core/lens_epilogue.h"

namespace {

using fusedlens::bf16;
using fusedlens::SoftmaxState;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Outputs {
  float* kl;     // [L, T]
  float* lse;    // [L, T]
  float* lse_f;  // [T]
  float* grad;   // [L, T, d] or null
};

// What one block of n tokens carries across vocabulary tiles. Rows r = l * n + j
// (lens site l, token j), then L * n + j (the final layer's row of token j).
struct BlockSums {
  int64_t L, n, R, lens_rows, rows_a, ld_acc;
  bool grad, capped;
  std::vector<SoftmaxState> st;
  std::vector<float> wsum;
  // a: Σ exp(z − m) c' W per lens row (and, without a cap, per final row: then it is b);
  // b: Σ exp(z_f − m_f) c' W per lens row, with a cap. Row stride ld_acc.
  fusedlens::AlignedVector<float> acc_a, acc_b;

  BlockSums(int64_t L_, int64_t n_, int64_t ld, bool grad_, bool capped_)
      : L(L_), n(n_), R((L_ + 1) * n_), lens_rows(L_ * n_), rows_a(capped_ ? L_ * n_ : (L_ + 1) * n_), ld_acc(ld),
        grad(grad_), capped(capped_), st(R), wsum(lens_rows, 0.f),
        acc_a(grad_ ? rows_a * ld : 0, 0.f), acc_b(grad_ && capped_ ? lens_rows * ld : 0, 0.f) {
    for (auto& s : st) s.reset();
  }
};

// One tile's logits and what is derived from them; row stride ld.
struct TileScratch {
  int64_t ld;
  fusedlens::AlignedVector<float> z, e, eb;
  std::vector<float> factor, factor_b;
  fusedlens::AlignedVector<bf16> e16, eb16;  // e and eb rounded for the bf16 gradient GEMM

  TileScratch(int64_t R, int64_t lens_rows, int64_t ld_, bool grad, bool capped, bool bf16_grad)
      : ld(ld_), z(R * ld_), e(R * ld_), eb(grad && capped ? lens_rows * ld_ : 0), factor(R, 1.f),
        factor_b(lens_rows, 1.f), e16(bf16_grad ? R * (ld_ + 1) : 0), eb16(bf16_grad && capped ? lens_rows * (ld_ + 1) : 0) {}
};

// Multiply row r of acc [rows, ld] by factor[r] (the rescale of its running max).
void rescale_rows(float* acc, const float* factor, int64_t rows, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    if (factor[r] == 1.f) continue;
    float* row = acc + r * ld;
    const float f = factor[r];
#pragma omp simd
    for (int64_t k = 0; k < ld; ++k) row[k] *= f;
  }
}

// Folds the tile's logits s.z [R, width] into b's softmax states and KL sums, leaves
// the weights of the gradient GEMM in s.e (and s.eb), and rescales b's accumulators to
// the new running maxima, so that acc += e · W_tile completes the tile.
void fold_tile(BlockSums& b, TileScratch& s, int64_t width, const float* bias, float cap) {
  const int64_t ld = s.ld, lens_rows = b.lens_rows;
  float* z = s.z.data();
  float* e = s.e.data();
  for (int64_t r = 0; r < b.R; ++r) fusedlens::bias_and_cap(z + r * ld, bias, cap, width);
  for (int64_t j = 0; j < b.n; ++j) {
    const int64_t rf = lens_rows + j;
    s.factor[rf] = fusedlens::fold_softmax(b.st[rf], z + rf * ld, width, e + rf * ld);
  }
  for (int64_t r = 0; r < lens_rows; ++r) {
    const int64_t rf = lens_rows + r % b.n;
    const float* zr = z + r * ld;
    const float* ef = e + rf * ld;
    float* er = e + r * ld;
    s.factor[r] = fusedlens::fold_softmax(b.st[r], zr, width, er);
    b.wsum[r] = b.wsum[r] * s.factor[rf] + fusedlens::kl_tile_term(ef, z + rf * ld, zr, width);
    if (b.grad && b.capped) {
      fusedlens::times_cap_slope(ef, zr, cap, s.eb.data() + r * ld, width);
      fusedlens::times_cap_slope(er, zr, cap, er, width);
      s.factor_b[r] = s.factor[rf];
    }
  }
  if (!b.grad) return;
  rescale_rows(b.acc_a.data(), s.factor.data(), b.rows_a, b.ld_acc);
  if (b.capped) rescale_rows(b.acc_b.data(), s.factor_b.data(), lens_rows, b.ld_acc);
}

void finish_block(const BlockSums& b, int64_t d, int64_t T, int64_t t0, const Outputs& out) {
  for (int64_t j = 0; j < b.n; ++j) out.lse_f[t0 + j] = b.st[b.lens_rows + j].lse();
  for (int64_t r = 0; r < b.lens_rows; ++r) {
    const int64_t l = r / b.n, j = r % b.n, g = l * T + t0 + j;
    const SoftmaxState& f = b.st[b.lens_rows + j];
    const float lse = b.st[r].lse();
    out.lse[g] = lse;
    out.kl[g] = fusedlens::kl_from_sums(b.wsum[r], f.s, f.lse(), lse);
    if (!b.grad) continue;
    // ∂KL/∂x = a / s − b / s_f
    const float* a = b.acc_a.data() + r * b.ld_acc;
    const float* bb = b.capped ? b.acc_b.data() + r * b.ld_acc : b.acc_a.data() + (b.lens_rows + j) * b.ld_acc;
    const float inv_s = 1.f / b.st[r].s, inv_sf = 1.f / f.s;
    float* dst = out.grad + g * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) dst[k] = a[k] * inv_s - bb[k] * inv_sf;
  }
}

// fp32: A [R, d] the block's stacked rows; the whole vocabulary on this thread.
void sweep_block_fp32(const torch::Tensor& A, const torch::Tensor& w, const float* bias, float cap, int64_t vocab_tile,
                      BlockSums& b) {
  const int64_t V = w.size(0), d = w.size(1);
  TileScratch s(b.R, b.lens_rows, vocab_tile, b.grad, b.capped, false);
  for (int64_t v0 = 0; v0 < V; v0 += vocab_tile) {
    const int64_t width = std::min(vocab_tile, V - v0);
    s.ld = width;  // dense rows, as mm_out writes them
    const auto w_tile = w.narrow(0, v0, width);
    auto Z = torch::from_blob(s.z.data(), {b.R, width}, A.options());
    at::mm_out(Z, A, w_tile.t());
    fold_tile(b, s, width, bias ? bias + v0 : nullptr, cap);
    if (!b.grad) continue;
    auto acc_a = torch::from_blob(b.acc_a.data(), {b.rows_a, d}, A.options());
    acc_a.addmm_(torch::from_blob(s.e.data(), {b.rows_a, width}, A.options()), w_tile);
    if (b.capped) {
      auto acc_b = torch::from_blob(b.acc_b.data(), {b.lens_rows, d}, A.options());
      acc_b.addmm_(torch::from_blob(s.eb.data(), {b.lens_rows, width}, A.options()), w_tile);
    }
  }
}

// bf16: every block at once, the vocabulary tile outermost. W is float32 or bf16
// (float32 values are rounded as they are packed).
template <typename W>
void sweep_bf16(const float* xn, const float* xf, const W* w, int64_t V, int64_t L, int64_t T, int64_t d,
                const float* bias, float cap, bool grad, int64_t tb, int64_t vocab_tile, const Outputs& out) {
  const bool capped = cap > 0.f;
  const int64_t dk = d + (d & 1), ld_acc = round_up(d, fusedlens::kPackPanel);
  const int64_t ld_z = round_up(vocab_tile, fusedlens::kPackPanel), blocks = (T + tb - 1) / tb;
  const int64_t max_rows = (L + 1) * tb;
  // the stacked rows of each block, rounded once: [blocks][(L + 1) * tb, dk]
  fusedlens::AlignedVector<bf16> rows(blocks * max_rows * dk);
  std::vector<BlockSums> sums;
  sums.reserve(blocks);
  for (int64_t blk = 0; blk < blocks; ++blk)
    sums.emplace_back(L, std::min(tb, T - blk * tb), ld_acc, grad, capped);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t t0 = blk * tb, n = sums[blk].n;
      bf16* dst = rows.data() + blk * max_rows * dk;
      for (int64_t l = 0; l < L; ++l) fusedlens::round_rows_bf16(xn + (l * T + t0) * d, d, n, d, dst + l * n * dk);
      fusedlens::round_rows_bf16(xf + t0 * d, d, n, d, dst + L * n * dk);
    }
  });
  std::vector<TileScratch> scratch;
  for (int i = 0; i < at::get_num_threads(); ++i) scratch.emplace_back(max_rows, L * tb, ld_z, grad, capped, grad);
  fusedlens::AlignedVector<uint32_t> packed_z(fusedlens::packed_b_size(vocab_tile, d));
  fusedlens::AlignedVector<uint32_t> packed_g(grad ? fusedlens::packed_b_size(d, vocab_tile) : 0);
  for (int64_t v0 = 0; v0 < V; v0 += vocab_tile) {
    const int64_t width = std::min(vocab_tile, V - v0), we = width + (width & 1);
    constexpr int64_t P = fusedlens::kPackPanel;
    const int64_t panels_z = (width + P - 1) / P, panels_g = grad ? (d + P - 1) / P : 0;
    const W* w_tile = w + v0 * d;
    at::parallel_for(0, panels_z + panels_g, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        if (p < panels_z) {  // logits: C = A · W_tileᵀ, pairs along d
          const int64_t j0 = p * P;
          fusedlens::pack_b(w_tile + j0 * d, d, std::min(P, width - j0), d, packed_z.data() + j0 * (dk / 2));
        } else {  // gradient: acc += E · W_tile, pairs along the vocabulary
          const int64_t j0 = (p - panels_z) * P;
          fusedlens::pack_b_t(w_tile + j0, d, width, std::min(P, d - j0), packed_g.data() + j0 * (we / 2));
        }
      }
    });
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      TileScratch& s = scratch[at::get_thread_num()];
      for (int64_t blk = b0; blk < b1; ++blk) {
        BlockSums& b = sums[blk];
        fusedlens::gemm_bf16(rows.data() + blk * max_rows * dk, dk, b.R, d, packed_z.data(), width, s.z.data(), ld_z);
        fold_tile(b, s, width, bias ? bias + v0 : nullptr, cap);
        if (!grad) continue;
        fusedlens::round_rows_bf16(s.e.data(), ld_z, b.rows_a, width, s.e16.data());
        fusedlens::gemm_bf16(s.e16.data(), we, b.rows_a, width, packed_g.data(), d, b.acc_a.data(), ld_acc, true);
        if (capped) {
          fusedlens::round_rows_bf16(s.eb.data(), ld_z, b.lens_rows, width, s.eb16.data());
          fusedlens::gemm_bf16(s.eb16.data(), we, b.lens_rows, width, packed_g.data(), d, b.acc_b.data(), ld_acc,
                               true);
        }
      }
    });
  }
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) finish_block(sums[blk], d, T, blk * tb, out);
  });
}

}  // namespace

// xn [L, T, d] float32 normalised lens residuals; xf [T, d] float32 the final layer's;
// w [V, d] float32 (or bfloat16 with bf16 compute). Returns kl [L, T], lse [L, T],
// lse_final [T] and, with with_grad, dKL/dxn [L, T, d] (else an empty tensor).
// bf16: every GEMM operand is rounded to bf16 (the residuals, W, and the softmax
// weights of the gradient GEMM); sums stay in fp32.
std::vector<torch::Tensor> lens_kl(const torch::Tensor& xn_in, const torch::Tensor& xf_in, const torch::Tensor& w_in,
                                   const c10::optional<torch::Tensor>& bias_in, double softcap, bool with_grad,
                                   int64_t token_block, int64_t vocab_tile, bool bf16) {
  TORCH_CHECK(xn_in.dim() == 3 && xf_in.dim() == 2 && w_in.dim() == 2, "lens_kl: xn [L, T, d], xf [T, d], w [V, d]");
  TORCH_CHECK(xn_in.scalar_type() == torch::kFloat32 && xf_in.scalar_type() == torch::kFloat32,
              "lens_kl: float32 xn and xf expected");
  TORCH_CHECK(w_in.scalar_type() == torch::kFloat32 || (bf16 && w_in.scalar_type() == torch::kBFloat16),
              "lens_kl: float32 w expected (or bfloat16 with bf16 compute)");
  TORCH_CHECK(xn_in.device().is_cpu() && xf_in.device().is_cpu() && w_in.device().is_cpu(), "lens_kl: CPU tensors");
  const auto xn = xn_in.contiguous();
  const auto xf = xf_in.contiguous();
  const auto w = w_in.contiguous();
  const int64_t L = xn.size(0), T = xn.size(1), d = xn.size(2), V = w.size(0);
  TORCH_CHECK(L >= 1 && T >= 1 && d >= 1 && V >= 1, "lens_kl: empty input");
  TORCH_CHECK(xf.size(0) == T && xf.size(1) == d && w.size(1) == d, "lens_kl: shape mismatch");
  torch::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->to(torch::kFloat32).contiguous();
    TORCH_CHECK(bias.numel() == V, "lens_kl: bias must have one entry per vocabulary row");
  }
  const float cap = softcap > 0 ? static_cast<float>(softcap) : 0.f;
  const int64_t tb = std::max<int64_t>(1, token_block), tile = std::max<int64_t>(16, vocab_tile);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto kl = torch::empty({L, T}, f32), lse = torch::empty({L, T}, f32), lse_f = torch::empty({T}, f32);
  auto grad = with_grad ? torch::empty({L, T, d}, f32) : torch::empty({0}, f32);
  const Outputs out{kl.data_ptr<float>(), lse.data_ptr<float>(), lse_f.data_ptr<float>(),
                    with_grad ? grad.data_ptr<float>() : nullptr};
  const float* bias_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
  if (bf16) {
    const float* x = xn.data_ptr<float>();
    const float* x_f = xf.data_ptr<float>();
    if (w.scalar_type() == torch::kBFloat16)
      sweep_bf16(x, x_f, reinterpret_cast<const fusedlens::bf16*>(w.data_ptr<at::BFloat16>()), V, L, T, d, bias_ptr,
                 cap, with_grad, tb, tile, out);
    else
      sweep_bf16(x, x_f, w.data_ptr<float>(), V, L, T, d, bias_ptr, cap, with_grad, tb, tile, out);
    return {kl, lse, lse_f, grad};
  }
  at::parallel_for(0, (T + tb - 1) / tb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * tb, n = std::min(tb, T - t0);
      const auto A = torch::cat({xn.narrow(1, t0, n).reshape({L * n, d}), xf.narrow(0, t0, n)}, 0).contiguous();
      BlockSums sums(L, n, d, with_grad, cap > 0.f);
      sweep_block_fp32(A, w, bias_ptr, cap, tile, sums);
      finish_block(sums, d, T, t0, out);
    }
  });
  return {kl, lse, lse_f, grad};
}
