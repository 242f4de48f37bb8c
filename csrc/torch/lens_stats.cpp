// Fused logit-lens statistics on CPU: tile GEMMs through ATen (MKL/oneDNN), the
// online epilogue from csrc/core, token blocks spread over threads with
// at::parallel_for. Logits exist one [rows x vocab_tile] tile at a time.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../core/gather_dot.h"
#include "../core/lens_epilogue.h"

namespace {

using fusedlens::RowQuery;
using fusedlens::RowState;

struct Sweep {
  const torch::Tensor& w;  // [V, d] float32
  const float* bias;       // [V] or null
  float cap;               // <= 0: none
  int64_t vocab_tile;
};

// Fold every vocab tile into the states of a block of rows A [sites * tokens, d],
// site-major. With lse_final, the last site's rows are the final layer: their
// probabilities on each tile give every other site's KL term.
void sweep_block(const Sweep& sw, const torch::Tensor& A, int64_t sites, int64_t tokens, RowState* st,
                 const RowQuery* q, const float* lse_final, float* pf_total, std::vector<float>& tile,
                 std::vector<float>& pf) {
  const int64_t rows = sites * tokens, V = sw.w.size(0);
  tile.resize(rows * sw.vocab_tile);
  pf.resize(sw.vocab_tile);
  for (int64_t v0 = 0; v0 < V; v0 += sw.vocab_tile) {
    const int64_t width = std::min(sw.vocab_tile, V - v0);
    auto out = torch::from_blob(tile.data(), {rows, width}, A.options());
    at::mm_out(out, A, sw.w.narrow(0, v0, width).t());
    for (int64_t r = 0; r < rows; ++r)
      fusedlens::bias_and_cap(tile.data() + r * width, sw.bias ? sw.bias + v0 : nullptr, sw.cap, width);
    for (int64_t j = 0; j < tokens; ++j) {
      const float* zf = tile.data() + ((sites - 1) * tokens + j) * width;
      if (lse_final) pf_total[j] += fusedlens::final_probs(zf, lse_final[j], pf.data(), width);
      for (int64_t s = 0; s < sites; ++s) {
        const int64_t r = s * tokens + j;
        fusedlens::fold_tile(st[r], q[r], tile.data() + r * width, v0, width, lse_final ? pf.data() : nullptr, zf);
      }
    }
  }
}

float capped(float z, float cap) { return cap > 0.f ? cap * std::tanh(z / cap) : z; }

}  // namespace

// xn [S, T, d] float32 normalised residuals (site S-1 = final layer); w [V, d] float32;
// targets [T] int64 (-1: none). Returns lse, entropy, topk_ids, topk_logits,
// target_logit, target_rank, kl_to_final, final_top1_rank (all [S, T] or [S, T, k]).
std::vector<torch::Tensor> lens_stats(const torch::Tensor& xn_in, const torch::Tensor& w_in,
                                      const c10::optional<torch::Tensor>& bias_in, double softcap,
                                      const torch::Tensor& targets_in, int64_t k, int64_t token_block,
                                      int64_t vocab_tile) {
  TORCH_CHECK(xn_in.dim() == 3 && w_in.dim() == 2 && targets_in.dim() == 1, "lens_stats: bad ranks");
  TORCH_CHECK(xn_in.scalar_type() == torch::kFloat32 && w_in.scalar_type() == torch::kFloat32,
              "lens_stats: float32 xn and w expected");
  TORCH_CHECK(k >= 1 && k <= fusedlens::kMaxTopK && k <= w_in.size(0), "lens_stats: k out of range");
  const auto xn = xn_in.contiguous();
  const auto w = w_in.contiguous();
  const auto targets = targets_in.to(torch::kInt64).contiguous();
  const int64_t S = xn.size(0), T = xn.size(1), d = xn.size(2), V = w.size(0);
  TORCH_CHECK(w.size(1) == d && targets.size(0) == T, "lens_stats: shape mismatch");
  torch::Tensor bias;
  if (bias_in.has_value()) bias = bias_in->to(torch::kFloat32).contiguous();
  const float cap = softcap > 0 ? static_cast<float>(softcap) : 0.f;
  const Sweep sw{w, bias.defined() ? bias.data_ptr<float>() : nullptr, cap, std::max<int64_t>(16, vocab_tile)};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t* tgt = targets.data_ptr<int64_t>();

  // Phase 1: the final layer alone, for its lse and top-1 (1/S of the work).
  std::vector<float> lse_final(T);
  std::vector<int64_t> top1_final(T);
  const torch::Tensor final_rows = xn[S - 1];
  const int64_t p1_block = std::max<int64_t>(token_block * S, 16);
  at::parallel_for(0, (T + p1_block - 1) / p1_block, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile, pf;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * p1_block, n = std::min(p1_block, T - t0);
      std::vector<RowState> st(n);
      std::vector<RowQuery> q(n, RowQuery{-1, nan, -1, nan});
      for (auto& s : st) s.reset(1);
      sweep_block(sw, final_rows.narrow(0, t0, n), 1, n, st.data(), q.data(), nullptr, nullptr, tile, pf);
      for (int64_t j = 0; j < n; ++j) {
        lse_final[t0 + j] = st[j].lse();
        top1_final[t0 + j] = st[j].top_id[0];
      }
    }
  });

  // Each row's logit at its target and at the final top-1: the rank thresholds.
  std::vector<int64_t> ids_t(S * T), ids_f(S * T);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t t = 0; t < T; ++t) {
      ids_t[s * T + t] = tgt[t] >= 0 ? tgt[t] : -1;
      ids_f[s * T + t] = top1_final[t];
    }
  std::vector<float> z_t(S * T), z_f(S * T);
  fusedlens::gather_dot<float>(xn.data_ptr<float>(), d, w.data_ptr<float>(), d, sw.bias, ids_t.data(), z_t.data(), S * T, d);
  fusedlens::gather_dot<float>(xn.data_ptr<float>(), d, w.data_ptr<float>(), d, sw.bias, ids_f.data(), z_f.data(), S * T, d);

  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto lse = torch::empty({S, T}, f32), entropy = torch::empty({S, T}, f32), kl = torch::empty({S, T}, f32);
  auto target_logit = torch::empty({S, T}, f32);
  auto target_rank = torch::empty({S, T}, i64), final_rank = torch::empty({S, T}, i64);
  auto topk_ids = torch::empty({S, T, k}, i64);
  auto topk_logits = torch::empty({S, T, k}, f32);

  // Phase 2: all sites of a token block together, so the final row shares each tile.
  at::parallel_for(0, (T + token_block - 1) / token_block, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile, pf;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * token_block, n = std::min(token_block, T - t0);
      const auto A = xn.narrow(1, t0, n).reshape({S * n, d}).contiguous();
      std::vector<RowState> st(S * n);
      std::vector<RowQuery> q(S * n);
      for (int64_t s = 0; s < S; ++s)
        for (int64_t j = 0; j < n; ++j) {
          const int64_t r = s * n + j, g = s * T + t0 + j;
          st[r].reset(static_cast<int>(k));
          q[r] = RowQuery{ids_t[g], capped(z_t[g], cap), ids_f[g], capped(z_f[g], cap)};
        }
      std::vector<float> pf_total(n, 0.f);
      sweep_block(sw, A, S, n, st.data(), q.data(), lse_final.data() + t0, pf_total.data(), tile, pf);
      for (int64_t s = 0; s < S; ++s)
        for (int64_t j = 0; j < n; ++j) {
          const RowState& r = st[s * n + j];
          const int64_t g = s * T + t0 + j;
          const float l = r.lse();
          lse.data_ptr<float>()[g] = l;
          entropy.data_ptr<float>()[g] = r.entropy();
          // KL = E_pf[z_f - z] - lse_f + lse, with this sweep's own final lse.
          const float lse_f = st[(S - 1) * n + j].lse();
          kl.data_ptr<float>()[g] = s == S - 1 ? 0.f : std::max(0.f, r.kl / pf_total[j] - lse_f + l);
          const bool has_target = ids_t[g] >= 0;
          target_logit.data_ptr<float>()[g] = has_target ? r.seen_target_logit : nan;
          target_rank.data_ptr<int64_t>()[g] = has_target ? r.rank_target : -1;
          final_rank.data_ptr<int64_t>()[g] = r.rank_final_top1;
          for (int64_t i = 0; i < k; ++i) {
            topk_ids.data_ptr<int64_t>()[g * k + i] = r.top_id[i];
            topk_logits.data_ptr<float>()[g * k + i] = r.top_logit[i];
          }
        }
    }
  });
  return {lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl, final_rank};
}
