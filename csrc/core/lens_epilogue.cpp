#include "lens_epilogue.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "isa.h"
#include "isa/exp_poly.h"

namespace fusedlens {

void RowState::reset(int topk) {
  m = -std::numeric_limits<float>::infinity();
  s = u = kl = 0.f;
  rank_target = rank_final_top1 = 0;
  seen_target_logit = std::numeric_limits<float>::quiet_NaN();
  k = topk;
  filled = 0;
  for (float& v : set_s) v = 0.f;
}

bool has_avx512_epilogue() { return active_isa() >= Isa::avx512; }

float RowState::lse() const { return m + std::log(s); }
float RowState::entropy() const { return std::log(s) - u / s; }

float exp_nonpos(float x) { return exp_nonpos_scalar(x); }

void bias_and_cap(float* z, const float* bias, float cap, int64_t width) {
  if (bias) {
#pragma omp simd
    for (int64_t i = 0; i < width; ++i) z[i] += bias[i];
  }
  if (cap > 0.f) {
    const float inv = 1.f / cap;
    for (int64_t i = 0; i < width; ++i) z[i] = cap * std::tanh(z[i] * inv);
  }
}

static void topk_insert(RowState& st, float value, int64_t id) {
  // Sorted descending; an equal value goes after the ones already there, which have
  // lower ids because tiles are folded in increasing id order (the tie rule).
  int pos = st.filled < st.k ? st.filled : st.k - 1;
  if (st.filled == st.k && !(value > st.top_logit[pos])) return;
  while (pos > 0 && st.top_logit[pos - 1] < value) {
    st.top_logit[pos] = st.top_logit[pos - 1];
    st.top_id[pos] = st.top_id[pos - 1];
    --pos;
  }
  st.top_logit[pos] = value;
  st.top_id[pos] = id;
  if (st.filled < st.k) ++st.filled;
}

float tile_max(const float* z, int64_t width) { return vec_kernels().tile_max(z, width); }

float exp_shifted(const float* z, float shift, float* p, int64_t width) {
  return vec_kernels().exp_shifted(z, shift, p, width);
}

// One pass over the tile: its sums are taken against the running max of the earlier tiles
// and rescaled after it if the tile raised the max (a separate max pass cost 2 % of the
// sweep). exp stays finite while the tile is at most kExcess above that max; a tile
// further above (or the first) is summed against its own max.
constexpr float kExcess = 64.f;

static void rescale(RowState& st, float top) {
  if (st.s > 0.f) {
    const float shift = st.m - top;
    const float scale = exp_nonpos_scalar(shift);
    st.u = scale * (st.u + shift * st.s);
    st.s *= scale;
    for (float& v : st.set_s) v *= scale;
  }
  st.m = top;
}

void fold_tile(RowState& st, const RowQuery& q, const float* z, int64_t v0, int64_t width,
               const float* p_final, const float* z_final, const int8_t* set_id, int n_sets) {
  if (st.m == -std::numeric_limits<float>::infinity()) st.m = tile_max(z, width);
  float s, u, kl, top;
  int64_t above_t, above_f;
  const auto& vk = vec_kernels();
  thread_local std::vector<float> e;  // the tile row's exps, for the token-set sums
  if (n_sets > 0 && static_cast<int64_t>(e.size()) < width) e.resize(width);
  float* e_out = n_sets > 0 ? e.data() : nullptr;
  vk.tile_sums(z, width, st.m, q.target_logit, q.final_top1_logit, p_final, z_final, &s, &u, &kl, &above_t, &above_f,
               &top, e_out);
  if (top > st.m + kExcess) {
    rescale(st, top);
    vk.tile_sums(z, width, st.m, q.target_logit, q.final_top1_logit, p_final, z_final, &s, &u, &kl, &above_t,
                 &above_f, &top, e_out);
  }
  if (n_sets > 0) vk.set_sums(e_out, width, set_id, n_sets, st.set_s);  // against the same shift as s
  st.s += s;
  st.u += u;
  st.kl += kl;
  st.rank_target += above_t;
  st.rank_final_top1 += above_f;
  if (top > st.m) rescale(st, top);
  if (q.target_id >= v0 && q.target_id < v0 + width) {
    const float own = z[q.target_id - v0];
    st.seen_target_logit = own;
    st.rank_target -= own > q.target_logit;
  }
  if (q.final_top1 >= v0 && q.final_top1 < v0 + width) st.rank_final_top1 -= z[q.final_top1 - v0] > q.final_top1_logit;

  // Top-k: only a tile whose max beats the current k-th value can change it, and then only
  // the positions above that value (found by the vector kernel, a chunk at a time, each chunk
  // against the k-th value as it stands) are inserted, in increasing id order (the tie rule).
  int64_t i = 0;
  for (; i < width && st.filled < st.k; ++i) topk_insert(st, z[i], v0 + i);
  if (i < width && top > st.top_logit[st.k - 1]) {
    constexpr int64_t kChunk = 256;
    int32_t idx[kChunk];
    for (; i < width; i += kChunk) {
      const int64_t len = width - i < kChunk ? width - i : kChunk;
      const int64_t n = vec_kernels().above(z + i, len, st.top_logit[st.k - 1], idx);
      for (int64_t j = 0; j < n; ++j)
        if (z[i + idx[j]] > st.top_logit[st.k - 1]) topk_insert(st, z[i + idx[j]], v0 + i + idx[j]);
    }
  }
}

}  // namespace fusedlens
