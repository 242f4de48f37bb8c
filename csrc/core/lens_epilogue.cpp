#include "lens_epilogue.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace fusedlens {

void RowState::reset(int topk) {
  m = -std::numeric_limits<float>::infinity();
  s = u = kl = 0.f;
  rank_target = rank_final_top1 = 0;
  seen_target_logit = std::numeric_limits<float>::quiet_NaN();
  k = topk;
  filled = 0;
}

float RowState::lse() const { return m + std::log(s); }
float RowState::entropy() const { return std::log(s) - u / s; }

// Inline body so that loops with `omp simd` vectorise it.
static inline float exp_nonpos_inline(float x) {
  const bool tiny = x < -87.0f;
  x = tiny ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  // Taylor to degree 7 on |r| <= ln2/2: truncation < 6e-9 relative.
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return tiny ? 0.f : p * scale;
}

float exp_nonpos(float x) { return exp_nonpos_inline(x); }

float final_probs(const float* z, float lse, float* p, int64_t width) {
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < width; ++i) {
    p[i] = exp_nonpos_inline(z[i] - lse);
    total += p[i];
  }
  return total;
}

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

void fold_tile(RowState& st, const RowQuery& q, const float* z, int64_t v0, int64_t width,
               const float* p_final, const float* z_final) {
  float tile_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : tile_max)
  for (int64_t i = 0; i < width; ++i) tile_max = z[i] > tile_max ? z[i] : tile_max;

  if (tile_max > st.m) {  // rescale s and u to the new max
    if (st.s > 0.f) {
      const float shift = st.m - tile_max;
      const float scale = exp_nonpos_inline(shift);
      st.u = scale * (st.u + shift * st.s);
      st.s *= scale;
    }
    st.m = tile_max;
  }
  const float m = st.m, zt = q.target_logit, zf = q.final_top1_logit;
  float s = 0.f, u = 0.f, kl = 0.f;
  int32_t above_t = 0, above_f = 0;
  if (p_final) {
#pragma omp simd reduction(+ : s, u, kl, above_t, above_f)
    for (int64_t i = 0; i < width; ++i) {
      const float d = z[i] - m;
      const float e = exp_nonpos_inline(d);
      s += e;
      u += e * d;
      kl += p_final[i] * (z_final[i] - z[i]);
      above_t += z[i] > zt;
      above_f += z[i] > zf;
    }
  } else {
#pragma omp simd reduction(+ : s, u, above_t, above_f)
    for (int64_t i = 0; i < width; ++i) {
      const float d = z[i] - m;
      const float e = exp_nonpos_inline(d);
      s += e;
      u += e * d;
      above_t += z[i] > zt;
      above_f += z[i] > zf;
    }
  }
  st.s += s;
  st.u += u;
  st.kl += kl;
  st.rank_target += above_t;
  st.rank_final_top1 += above_f;
  if (q.target_id >= v0 && q.target_id < v0 + width) {
    const float own = z[q.target_id - v0];
    st.seen_target_logit = own;
    st.rank_target -= own > zt;
  }
  if (q.final_top1 >= v0 && q.final_top1 < v0 + width) st.rank_final_top1 -= z[q.final_top1 - v0] > zf;

  // Top-k: only a tile whose max beats the current k-th value can change it.
  if (st.filled < st.k || tile_max > st.top_logit[st.k - 1]) {
    for (int64_t i = 0; i < width; ++i) {
      if (st.filled < st.k || z[i] > st.top_logit[st.k - 1]) topk_insert(st, z[i], v0 + i);
    }
  }
}

}  // namespace fusedlens
