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
  top.reset(topk);
  for (float& v : set_s) v = 0.f;
}

void TopK::reset(int topk) {
  k = topk;
  filled = 0;
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

void TopK::insert(float v, int64_t i) {
  // Sorted descending; an equal value goes after the ones already there, which have
  // lower ids because tiles are folded in increasing id order (the tie rule).
  int pos = filled < k ? filled : k - 1;
  if (filled == k && !(v > value[pos])) return;
  while (pos > 0 && value[pos - 1] < v) {
    value[pos] = value[pos - 1];
    id[pos] = id[pos - 1];
    --pos;
  }
  value[pos] = v;
  id[pos] = i;
  if (filled < k) ++filled;
}

void TopK::fold(const float* z, int64_t v0, int64_t width, float max_z) {
  // Only a tile whose max beats the current k-th value can change it, and then only the
  // positions above that value (found by the vector kernel, a chunk at a time, each chunk
  // against the k-th value as it stands) are inserted, in increasing id order (the tie rule).
  int64_t i = 0;
  for (; i < width && filled < k; ++i) insert(z[i], v0 + i);
  if (i < width && max_z > value[k - 1]) {
    constexpr int64_t kChunk = 256;
    int32_t idx[kChunk];
    for (; i < width; i += kChunk) {
      const int64_t len = width - i < kChunk ? width - i : kChunk;
      const int64_t n = vec_kernels().above(z + i, len, value[k - 1], idx);
      for (int64_t j = 0; j < n; ++j)
        if (z[i + idx[j]] > value[k - 1]) insert(z[i + idx[j]], v0 + i + idx[j]);
    }
  }
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
               const float* p_final, const float* z_final, const TileSets& sets) {
  if (st.m == -std::numeric_limits<float>::infinity()) st.m = tile_max(z, width);
  float s, u, kl, tmax;
  int64_t above_t, above_f;
  const auto& vk = vec_kernels();
  thread_local std::vector<float> e;  // the tile row's exps, for the token-set sums
  if (sets.n > 0 && static_cast<int64_t>(e.size()) < width) e.resize(width);
  float* e_out = sets.n > 0 ? e.data() : nullptr;
  vk.tile_sums(z, width, st.m, q.target_logit, q.final_top1_logit, p_final, z_final, &s, &u, &kl, &above_t, &above_f,
               &tmax, e_out);
  if (tmax > st.m + kExcess) {
    rescale(st, tmax);
    vk.tile_sums(z, width, st.m, q.target_logit, q.final_top1_logit, p_final, z_final, &s, &u, &kl, &above_t,
                 &above_f, &tmax, e_out);
  }
  if (sets.listed) {  // sparse sets: their members one by one (a vector kernel would test every block)
    for (int64_t k = 0; k < sets.n_listed; ++k) {
      const int64_t i = sets.listed[k] - v0;
      st.set_s[sets.id[i]] += e_out[i];  // against the same shift as s
    }
  } else if (sets.n > 0) {
    vk.set_sums(e_out, width, sets, st.set_s);
  }
  st.s += s;
  st.u += u;
  st.kl += kl;
  st.rank_target += above_t;
  st.rank_final_top1 += above_f;
  if (tmax > st.m) rescale(st, tmax);
  if (q.target_id >= v0 && q.target_id < v0 + width) {
    const float own = z[q.target_id - v0];
    st.seen_target_logit = own;
    st.rank_target -= own > q.target_logit;
  }
  if (q.final_top1 >= v0 && q.final_top1 < v0 + width) st.rank_final_top1 -= z[q.final_top1 - v0] > q.final_top1_logit;
  st.top.fold(z, v0, width, tmax);  // tmax: the tile's max, from tile_sums
}

}  // namespace fusedlens
