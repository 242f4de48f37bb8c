// Fused logit-lens statistics on CPU: tile GEMMs through our float32 kernel (ATen's on
// the generic ISA level) or the bf16-dot kernel of csrc/core, the online epilogue from
// csrc/core, token groups spread over threads with at::parallel_for. Logits exist
// one [rows x vocab_tile] tile at a time.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/aligned.h"
#include "../core/bf16_gemm.h"
#include "../core/f32_gemm.h"
#include "../core/gather_dot.h"
#include "../core/lens_epilogue.h"

namespace {

using fusedlens::AlignedVector;
using fusedlens::bf16;
using fusedlens::RowQuery;
using fusedlens::RowState;

// W_U as the sweep multiplies it: float32 through the f32 tile kernel (or ATen's GEMM
// on the generic level), or bfloat16 through the bf16-dot tile kernel (the rows were
// rounded to bf16 before the sweep).
struct Sweep {
  torch::Tensor w;         // [V, d] float32 or bfloat16
  const float* bias;       // [V] or null
  float cap;               // <= 0: none
  int64_t vocab_tile;
  const int8_t* set_id;    // [V] token-set ids (-1: none), or null
  int n_sets;
  bool bf16() const { return w.scalar_type() == torch::kBFloat16; }
  bool own_f32() const { return !bf16() && fusedlens::f32_gemm_kernel().fast; }
};

// One group of tokens: rows A [sites * tokens, d] site-major (the last site's rows
// are the final layer), their running states and queries.
struct Group {
  torch::Tensor a;          // float32 rows [sites, tokens, d] (a view until the sweep copies and packs it)
  AlignedVector<bf16> a16;  // the same rows as bf16, even row length (bf16 sweep)
  AlignedVector<float> a32; // the same rows packed for the f32 tile kernel
  int64_t sites, tokens;
  RowState* st;
  const RowQuery* q;
  const float* lse_final;   // null: no KL (phase 1)
  float* pf_total;
};

// Fold every vocab tile into the states of each group's rows. The loop over tiles is the
// outer one: each W_U tile is packed once, by all threads together (panels are
// independent), and then serves every group on every thread; logits exist one
// [rows x tile] block per thread at a time. (Packing per thread and unit of groups cost
// 2 % of a 31-site sweep, and a fifth of a one-site sweep of 512 tokens.)
void sweep(const Sweep& sw, std::vector<Group>& groups) {
  const int64_t V = sw.w.size(0), d = sw.w.size(1), k_pad = d + (d & 1);
  const int64_t n_groups = static_cast<int64_t>(groups.size());
  int64_t max_rows = 0;
  for (auto& g : groups) {
    const int64_t rows = g.sites * g.tokens;
    max_rows = std::max(max_rows, sw.own_f32() ? fusedlens::f32_rows_padded(rows) : rows);
  }
  at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      Group& g = groups[gi];
      const int64_t rows = g.sites * g.tokens;
      g.a = g.a.reshape({rows, d}).contiguous();  // this group's rows, site-major: a copy made here, per group
      if (sw.bf16()) {
        g.a16.resize(rows * k_pad);
        fusedlens::round_rows_bf16(g.a.data_ptr<float>(), d, rows, d, g.a16.data());
      } else if (sw.own_f32()) {
        g.a32.resize(fusedlens::f32_rows_padded(rows) * d);
        fusedlens::f32_pack_a(g.a.data_ptr<float>(), d, rows, d, g.a32.data());
      }
      if (sw.bf16() || sw.own_f32()) g.a = torch::Tensor();  // packed: the float32 copy is no longer read
    }
  });
  const int64_t ld_max = sw.own_f32() ? fusedlens::f32_cols_padded(sw.vocab_tile) : (sw.vocab_tile + 31) / 32 * 32;
  struct Scratch {
    AlignedVector<float> tile;
    std::vector<float> pf;
  };
  std::vector<Scratch> scratch(at::get_num_threads());
  AlignedVector<uint32_t> packed(sw.bf16() ? fusedlens::packed_b_size(sw.vocab_tile, d) : 0);
  AlignedVector<float> packed32(sw.own_f32() ? fusedlens::f32_cols_padded(sw.vocab_tile) * d : 0);
  const auto* w16 = sw.bf16() ? reinterpret_cast<const bf16*>(sw.w.data_ptr()) : nullptr;
  const int64_t panel = sw.bf16() ? fusedlens::kPackPanel : sw.own_f32() ? fusedlens::f32_gemm_kernel().nr : 1;
  for (int64_t v0 = 0; v0 < V; v0 += sw.vocab_tile) {
    const int64_t width = std::min(sw.vocab_tile, V - v0);
    const int64_t ld = sw.bf16() ? (width + 31) / 32 * 32 : sw.own_f32() ? fusedlens::f32_cols_padded(width) : width;
    if (sw.bf16() || sw.own_f32()) {
      // whole panels per task, a few tasks per thread
      const int64_t panels = (width + panel - 1) / panel;
      const int64_t per_task = std::max<int64_t>(1, panels / (4 * at::get_num_threads()));
      at::parallel_for(0, (panels + per_task - 1) / per_task, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t j0 = t * per_task * panel, cols = std::min(per_task * panel, width - j0);
          if (cols <= 0) continue;
          if (sw.bf16())
            fusedlens::pack_b(w16 + (v0 + j0) * d, d, cols, d, packed.data() + j0 * (k_pad / 2));
          else
            fusedlens::f32_pack_b(sw.w.data_ptr<float>() + (v0 + j0) * d, d, cols, d, packed32.data() + j0 * d);
        }
      });
    }
    at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
      Scratch& sc = scratch[at::get_thread_num()];
      if (sc.tile.empty()) {
        sc.tile.resize(max_rows * ld_max);
        sc.pf.resize(sw.vocab_tile);
      }
      float* tile = sc.tile.data();
      for (int64_t gi = g0; gi < g1; ++gi) {
        Group& g = groups[gi];
        const int64_t rows = g.sites * g.tokens;
        if (sw.bf16()) {
          fusedlens::gemm_bf16(g.a16.data(), k_pad, rows, d, packed.data(), width, tile, ld);
        } else if (sw.own_f32()) {
          fusedlens::f32_gemm(g.a32.data(), rows, d, packed32.data(), width, tile, ld);
        } else {
          auto out = torch::from_blob(tile, {rows, width}, g.a.options());
          at::mm_out(out, g.a, sw.w.narrow(0, v0, width).t());
        }
        for (int64_t r = 0; r < rows; ++r)
          fusedlens::bias_and_cap(tile + r * ld, sw.bias ? sw.bias + v0 : nullptr, sw.cap, width);
        for (int64_t j = 0; j < g.tokens; ++j) {
          const float* zf = tile + ((g.sites - 1) * g.tokens + j) * ld;
          if (g.lse_final) g.pf_total[j] += fusedlens::final_probs(zf, g.lse_final[j], sc.pf.data(), width);
          for (int64_t s = 0; s < g.sites; ++s) {
            const int64_t r = s * g.tokens + j;
            fusedlens::fold_tile(g.st[r], g.q[r], tile + r * ld, v0, width, g.lse_final ? sc.pf.data() : nullptr,
                                 zf, sw.set_id ? sw.set_id + v0 : nullptr, sw.n_sets);
          }
        }
      }
    });
  }
}

float capped(float z, float cap) { return cap > 0.f ? cap * std::tanh(z / cap) : z; }

// Each row's logit at ids[r] (< 0: NaN), plus the bias: the rank thresholds.
std::vector<float> logits_at(const Sweep& sw, const torch::Tensor& xn, const std::vector<int64_t>& ids) {
  const int64_t rows = static_cast<int64_t>(ids.size()), d = xn.size(-1);
  std::vector<float> out(rows);
  if (sw.bf16())
    fusedlens::gather_dot<bf16>(xn.data_ptr<float>(), d, reinterpret_cast<const bf16*>(sw.w.data_ptr()), d,
                                nullptr, ids.data(), out.data(), rows, d);
  else
    fusedlens::gather_dot<float>(xn.data_ptr<float>(), d, sw.w.data_ptr<float>(), d, nullptr, ids.data(),
                                 out.data(), rows, d);
  if (sw.bias)
    for (int64_t r = 0; r < rows; ++r)
      if (ids[r] >= 0) out[r] += sw.bias[ids[r]];
  return out;
}

}  // namespace

// xn [S, T, d] float32 normalised residuals (site S-1 = final layer); w [V, d] float32
// or bfloat16; targets [T] int64 (-1: none); token_sets [V] (-1: in no set, else a set
// id < 16) or none. With bf16 w the rows are rounded to bf16 first, so the statistics are
// those of bf16(xn) . W. Returns lse, entropy, topk_ids, topk_logits, target_logit,
// target_rank, kl_to_final, final_top1_rank ([S, T] or [S, T, k]) and set_mass [S, T, sets].
std::vector<torch::Tensor> lens_stats(const torch::Tensor& xn_in, const torch::Tensor& w_in,
                                      const c10::optional<torch::Tensor>& bias_in, double softcap,
                                      const torch::Tensor& targets_in, int64_t k, int64_t token_block,
                                      int64_t vocab_tile, const c10::optional<torch::Tensor>& token_sets) {
  TORCH_CHECK(xn_in.dim() == 3 && w_in.dim() == 2 && targets_in.dim() == 1, "lens_stats: bad ranks");
  TORCH_CHECK(xn_in.scalar_type() == torch::kFloat32, "lens_stats: float32 xn expected");
  TORCH_CHECK(w_in.scalar_type() == torch::kFloat32 || w_in.scalar_type() == torch::kBFloat16,
              "lens_stats: float32 or bfloat16 w expected");
  TORCH_CHECK(k >= 1 && k <= fusedlens::kMaxTopK && k <= w_in.size(0), "lens_stats: k out of range");
  TORCH_CHECK(token_block >= 1 && vocab_tile >= 1, "lens_stats: token_block and vocab_tile must be positive");
  const bool round_bf16 = w_in.scalar_type() == torch::kBFloat16;
  // The residual the bf16 dot product sees; without bf16 instructions, the same
  // numbers go through the float32 GEMM.
  const auto xn = round_bf16 ? xn_in.to(torch::kBFloat16).to(torch::kFloat32) : xn_in.contiguous();
  const auto w = round_bf16 && !fusedlens::has_bf16_dot() ? w_in.to(torch::kFloat32) : w_in.contiguous();
  const auto targets = targets_in.to(torch::kInt64).contiguous();
  const int64_t S = xn.size(0), T = xn.size(1), d = xn.size(2);
  TORCH_CHECK(w.size(1) == d && targets.size(0) == T, "lens_stats: shape mismatch");
  torch::Tensor bias;
  if (bias_in.has_value()) bias = bias_in->to(torch::kFloat32).contiguous();
  const float cap = softcap > 0 ? static_cast<float>(softcap) : 0.f;
  torch::Tensor sets;
  int n_sets = 0;
  if (token_sets.has_value()) {
    TORCH_CHECK(token_sets->dim() == 1 && token_sets->size(0) == w.size(0), "lens_stats: token_sets must be [vocab]");
    sets = token_sets->to(torch::kInt8).contiguous();
    const auto lo_hi = torch::aminmax(token_sets->to(torch::kInt64));
    const int64_t lo = std::get<0>(lo_hi).item<int64_t>(), hi = std::get<1>(lo_hi).item<int64_t>();
    TORCH_CHECK(lo >= -1 && hi < fusedlens::kMaxSets, "lens_stats: token set ids must be in [-1, 16)");
    n_sets = static_cast<int>(hi + 1);
  }
  Sweep sw{w, bias.defined() ? bias.data_ptr<float>() : nullptr, cap, std::max<int64_t>(32, vocab_tile),
           sets.defined() ? sets.data_ptr<int8_t>() : nullptr, n_sets};
  if (sw.own_f32()) {  // whole register-tile panels (AVX-512: 48 columns, so 1,024 becomes 1,008)
    const int64_t nr = fusedlens::f32_gemm_kernel().nr;
    sw.vocab_tile = std::max(nr, vocab_tile / nr * nr);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t* tgt = targets.data_ptr<int64_t>();

  // Phase 1: the final layer alone, for its lse and top-1 (1/S of the work). A single site is its
  // own final layer (KL 0, its top-1 ranked 0): one sweep does, as probe targets want.
  const bool one_site = S == 1;
  std::vector<float> lse_final(T);
  std::vector<int64_t> top1_final(T, -1);
  const torch::Tensor final_rows = xn[S - 1];
  // About as many rows per group as phase 2 has, in equal groups whose count is a multiple of the
  // threads: 1,024 tokens in groups of 248 left one thread 744 tokens and the other 280.
  const int64_t threads = at::get_num_threads(), rows_wanted = std::max<int64_t>(token_block * S, 16);
  const int64_t p1_groups = threads * std::max<int64_t>(1, (T + threads * rows_wanted / 2) / (threads * rows_wanted));
  const int64_t p1_tokens = std::max<int64_t>(1, (T + p1_groups - 1) / p1_groups);
  if (!one_site) {
    std::vector<RowState> st(T);
    std::vector<RowQuery> q(T, RowQuery{-1, nan, -1, nan});
    for (auto& s : st) s.reset(1);
    std::vector<Group> groups;
    for (int64_t t0 = 0; t0 < T; t0 += p1_tokens) {
      const int64_t m = std::min(p1_tokens, T - t0);
      groups.push_back(Group{final_rows.narrow(0, t0, m), {}, {}, 1, m, st.data() + t0, q.data() + t0, nullptr, nullptr});
    }
    Sweep final_only = sw;
    final_only.set_id = nullptr, final_only.n_sets = 0;
    sweep(final_only, groups);
    for (int64_t t = 0; t < T; ++t) {
      lse_final[t] = st[t].lse();
      top1_final[t] = st[t].top_id[0];
    }
  }

  std::vector<int64_t> ids_t(S * T), ids_f(S * T);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t t = 0; t < T; ++t) {
      ids_t[s * T + t] = tgt[t] >= 0 ? tgt[t] : -1;
      ids_f[s * T + t] = top1_final[t];
    }
  const std::vector<float> z_t = logits_at(sw, xn, ids_t), z_f = logits_at(sw, xn, ids_f);

  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto lse = torch::empty({S, T}, f32), entropy = torch::empty({S, T}, f32), kl = torch::empty({S, T}, f32);
  auto target_logit = torch::empty({S, T}, f32);
  auto target_rank = torch::empty({S, T}, i64), final_rank = torch::empty({S, T}, i64);
  auto topk_ids = torch::empty({S, T, k}, i64);
  auto topk_logits = torch::empty({S, T, k}, f32);
  auto set_mass = torch::empty({S, T, n_sets}, f32);

  // Phase 2: all sites of a token group together, so the final row shares each tile.
  std::vector<RowState> st(S * T);
  std::vector<RowQuery> q(S * T);
  std::vector<float> pf_total(T, 0.f);
  std::vector<Group> groups;
  for (int64_t t0 = 0; t0 < T; t0 += token_block) {
    const int64_t m = std::min(token_block, T - t0);
    RowState* gst = st.data() + S * t0;
    RowQuery* gq = q.data() + S * t0;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t j = 0; j < m; ++j) {
        const int64_t g = s * T + t0 + j;
        gst[s * m + j].reset(static_cast<int>(k));
        gq[s * m + j] = RowQuery{ids_t[g], capped(z_t[g], cap), ids_f[g], capped(z_f[g], cap)};
      }
    groups.push_back(Group{xn.narrow(1, t0, m), {}, {}, S, m, gst, gq, one_site ? nullptr : lse_final.data() + t0,
                           pf_total.data() + t0});
  }
  sweep(sw, groups);
  at::parallel_for(0, static_cast<int64_t>(groups.size()), 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      const Group& grp = groups[gi];
      const int64_t m = grp.tokens, first = gi * token_block;
      for (int64_t s = 0; s < S; ++s)
        for (int64_t j = 0; j < m; ++j) {
          const RowState& r = grp.st[s * m + j];
          const int64_t g = s * T + first + j;
          const float l = r.lse();
          lse.data_ptr<float>()[g] = l;
          entropy.data_ptr<float>()[g] = r.entropy();
          // KL = E_pf[z_f - z] - lse_f + lse, with this sweep's own final lse.
          const float lse_f = grp.st[(S - 1) * m + j].lse();
          kl.data_ptr<float>()[g] = s == S - 1 ? 0.f : std::max(0.f, r.kl / grp.pf_total[j] - lse_f + l);
          const bool has_target = ids_t[g] >= 0;
          target_logit.data_ptr<float>()[g] = has_target ? r.seen_target_logit : nan;
          target_rank.data_ptr<int64_t>()[g] = has_target ? r.rank_target : -1;
          final_rank.data_ptr<int64_t>()[g] = one_site ? 0 : r.rank_final_top1;
          for (int64_t i = 0; i < k; ++i) {
            topk_ids.data_ptr<int64_t>()[g * k + i] = r.top_id[i];
            topk_logits.data_ptr<float>()[g * k + i] = r.top_logit[i];
          }
          for (int j = 0; j < n_sets; ++j) set_mass.data_ptr<float>()[g * n_sets + j] = r.set_s[j] / r.s;
        }
    }
  });
  return {lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl, final_rank, set_mass};
}
