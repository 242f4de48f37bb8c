// Fused logit-lens statistics on CPU: the shared sweep over vocabulary tiles (tile_sweep.h:
// our float32 tile GEMM, ATen's on the generic ISA level, or the bf16-dot kernel of
// csrc/core, token groups spread over threads with at::parallel_for) and the online epilogue
// from csrc/core. Logits exist one [rows x vocab_tile] tile at a time.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/bf16_gemm.h"
#include "../core/gather_dot.h"
#include "../core/lens_epilogue.h"
#include "tile_sweep.h"

namespace {

using fusedlens::bf16;
using fusedlens::RowQuery;
using fusedlens::RowState;
using fusedlens::TileGroup;

// W_U as the shared tile sweep multiplies it (tile_sweep.h), and what the statistics add to
// each tile: the bias, the softcap and the token sets.
struct Sweep {
  fusedlens::TileWeights tiles;
  const float* bias;       // [V] or null
  float cap;               // <= 0: none
  fusedlens::TileSets sets;  // of the whole vocabulary (stride V), or none
  bool bf16() const { return tiles.bf16(); }
};

// One group of tokens: rows A [sites * tokens, d] site-major (the last site's rows are
// the final layer), their running states and queries.
struct Group {
  torch::Tensor a;          // float32 rows [sites, tokens, d] (a view: the sweep copies and packs it)
  int64_t sites, tokens;
  RowState* st;
  const RowQuery* q;
  const float* lse_final;   // null: no KL (phase 1)
  float* pf_total;
};

// Fold every vocab tile into the states of each group's rows, through the shared sweep
// (tile_sweep.h: each W_U tile packed once, then multiplied by every group on every thread).
void sweep(const Sweep& sw, std::vector<Group>& groups) {
  std::vector<TileGroup> tg;
  for (auto& g : groups) tg.push_back(TileGroup{std::move(g.a), {}, {}, g.sites * g.tokens});
  fusedlens::sweep_tiles(sw.tiles, tg, [&](int64_t gi, float* tile, int64_t ld, int64_t v0, int64_t width) {
    thread_local std::vector<float> pf;  // the final row's probabilities on the tile
    if (static_cast<int64_t>(pf.size()) < width) pf.resize(width);
    Group& g = groups[gi];
    const int64_t rows = g.sites * g.tokens;
    fusedlens::TileSets tile_sets = sw.sets;  // this tile's part
    if (tile_sets.n > 0) tile_sets.id += v0;
    if (tile_sets.member) tile_sets.member += v0;
    if (tile_sets.listed) {
      const int32_t* end = sw.sets.listed + sw.sets.n_listed;
      tile_sets.listed = std::lower_bound(sw.sets.listed, end, v0);
      tile_sets.n_listed = std::lower_bound(tile_sets.listed, end, v0 + width) - tile_sets.listed;
    }
    for (int64_t r = 0; r < rows; ++r)
      fusedlens::bias_and_cap(tile + r * ld, sw.bias ? sw.bias + v0 : nullptr, sw.cap, width);
    for (int64_t j = 0; j < g.tokens; ++j) {
      const float* zf = tile + ((g.sites - 1) * g.tokens + j) * ld;
      if (g.lse_final) g.pf_total[j] += fusedlens::final_probs(zf, g.lse_final[j], pf.data(), width);
      for (int64_t s = 0; s < g.sites; ++s) {
        const int64_t r = s * g.tokens + j;
        fusedlens::fold_tile(g.st[r], g.q[r], tile + r * ld, v0, width, g.lse_final ? pf.data() : nullptr, zf,
                             tile_sets);
      }
    }
  });
}

float capped(float z, float cap) { return cap > 0.f ? cap * std::tanh(z / cap) : z; }

// Each row's logit at ids[r] (< 0: NaN), plus the bias: the rank thresholds.
std::vector<float> logits_at(const Sweep& sw, const torch::Tensor& xn, const std::vector<int64_t>& ids) {
  const int64_t rows = static_cast<int64_t>(ids.size()), d = xn.size(-1);
  std::vector<float> out(rows);
  const torch::Tensor& w = sw.tiles.w;
  if (sw.bf16())
    fusedlens::gather_dot<bf16>(xn.data_ptr<float>(), d, reinterpret_cast<const bf16*>(w.data_ptr()), d,
                                nullptr, ids.data(), out.data(), rows, d);
  else
    fusedlens::gather_dot<float>(xn.data_ptr<float>(), d, w.data_ptr<float>(), d, nullptr, ids.data(),
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
  const int64_t V = w.size(0);  // (listed ids are int32: vocabularies are far below 2^31)
  // The sets' membership in the form their sums want (TileSets): the members' ids if they are at
  // most 1 in 8 tokens, else set-major 0/1 columns (V x 64 bytes at most).
  fusedlens::AlignedVector<float> member;
  std::vector<int32_t> listed;
  fusedlens::TileSets all_sets;
  if (n_sets > 0) {
    const int8_t* id = sets.data_ptr<int8_t>();
    for (int64_t v = 0; v < V; ++v)
      if (id[v] >= 0) listed.push_back(static_cast<int32_t>(v));
    all_sets = fusedlens::TileSets{id, nullptr, V, nullptr, 0, n_sets};
    if (static_cast<int64_t>(listed.size()) * 8 <= V) {
      all_sets.listed = listed.data(), all_sets.n_listed = static_cast<int64_t>(listed.size());
    } else {
      member.assign(n_sets * V, 0.f);
      for (int64_t v : listed) member[id[v] * V + v] = 1.f;
      all_sets.member = member.data();
    }
  }
  const Sweep sw{{w, fusedlens::sweep_vocab_tile(w, vocab_tile)}, bias.defined() ? bias.data_ptr<float>() : nullptr,
                 cap, all_sets};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t* tgt = targets.data_ptr<int64_t>();

  // Phase 1: the final layer alone, for its lse and top-1 (1/S of the work). A single site is its
  // own final layer (KL 0, its top-1 ranked 0): one sweep does, as probe targets want.
  const bool one_site = S == 1;
  std::vector<float> lse_final(T);
  std::vector<int64_t> top1_final(T, -1);
  const torch::Tensor final_rows = xn[S - 1];
  // About as many rows per group as phase 2 has, in equal groups (one row per token here).
  const int64_t p1_tokens = fusedlens::sweep_group_rows(T, std::max<int64_t>(token_block * S, 16));
  if (!one_site) {
    std::vector<RowState> st(T);
    std::vector<RowQuery> q(T, RowQuery{-1, nan, -1, nan});
    for (auto& s : st) s.reset(1);
    std::vector<Group> groups;
    for (int64_t t0 = 0; t0 < T; t0 += p1_tokens) {
      const int64_t m = std::min(p1_tokens, T - t0);
      groups.push_back(Group{final_rows.narrow(0, t0, m), 1, m, st.data() + t0, q.data() + t0, nullptr, nullptr});
    }
    Sweep final_only = sw;
    final_only.sets = fusedlens::TileSets{};
    sweep(final_only, groups);
    for (int64_t t = 0; t < T; ++t) {
      lse_final[t] = st[t].lse();
      top1_final[t] = st[t].top.id[0];
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
    groups.push_back(Group{xn.narrow(1, t0, m), S, m, gst, gq, one_site ? nullptr : lse_final.data() + t0,
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
            topk_ids.data_ptr<int64_t>()[g * k + i] = r.top.id[i];
            topk_logits.data_ptr<float>()[g * k + i] = r.top.value[i];
          }
          for (int j = 0; j < n_sets; ++j) set_mass.data_ptr<float>()[g * n_sets + j] = r.set_s[j] / r.s;
        }
    }
  });
  return {lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl, final_rank, set_mass};
}

// The same sweep with no epilogue: every tile of logits of xn [S, T, d] against w [V, d] computed
// (groups of token_block tokens of all sites, as lens_stats' second phase has them) and dropped.
// The floor of our own tile GEMM, for the benchmarks (bench/lens_stats.py: own_tile_gemm).
void sweep_floor(const torch::Tensor& xn_in, const torch::Tensor& w_in, int64_t token_block, int64_t vocab_tile) {
  TORCH_CHECK(xn_in.dim() == 3 && w_in.dim() == 2 && xn_in.size(2) == w_in.size(1), "sweep_floor: bad shapes");
  TORCH_CHECK(xn_in.scalar_type() == torch::kFloat32 && w_in.scalar_type() == torch::kFloat32,
              "sweep_floor: float32 expected");
  TORCH_CHECK(token_block >= 1 && vocab_tile >= 1, "sweep_floor: token_block and vocab_tile must be positive");
  const auto xn = xn_in.contiguous(), w = w_in.contiguous();
  const int64_t S = xn.size(0), T = xn.size(1);
  const fusedlens::TileWeights tiles{w, fusedlens::sweep_vocab_tile(w, vocab_tile)};
  std::vector<fusedlens::TileGroup> groups;
  for (int64_t t0 = 0; t0 < T; t0 += token_block) {
    const int64_t m = std::min(token_block, T - t0);
    groups.push_back(fusedlens::TileGroup{xn.narrow(1, t0, m), {}, {}, S * m});
  }
  fusedlens::sweep_tiles(tiles, groups, [](int64_t, float*, int64_t, int64_t, int64_t) {});
}
