#include "lens_epilogue.h"

#include <cmath>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) && !defined(FUSEDLENS_PORTABLE)
#include <immintrin.h>

#include <initializer_list>
#endif

namespace fusedlens {

void RowState::reset(int topk) {
  m = -std::numeric_limits<float>::infinity();
  s = u = kl = 0.f;
  rank_target = rank_final_top1 = 0;
  seen_target_logit = std::numeric_limits<float>::quiet_NaN();
  k = topk;
  filled = 0;
}

bool has_avx512_epilogue() {
#if defined(__AVX512F__) && !defined(FUSEDLENS_PORTABLE)
  return true;
#else
  return false;
#endif
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

#if defined(__AVX512F__) && !defined(FUSEDLENS_PORTABLE)
// exp(x) for x <= 0, 16 lanes: the same range reduction and polynomial as the scalar one.
static inline __m512 exp_nonpos16(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_LT_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  for (float c : {1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~tiny), p, n);
}

static inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

float tile_max(const float* z, int64_t width) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 mx = ninf;
  for (int64_t i = 0; i < width; i += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, lanes(width - i), z + i));
  return _mm512_reduce_max_ps(mx);
}

float exp_shifted(const float* z, float shift, float* p, int64_t width) {
  __m512 total = _mm512_setzero_ps();
  const __m512 l = _mm512_set1_ps(shift);
  for (int64_t i = 0; i < width; i += 16) {
    const __mmask16 k = lanes(width - i);
    const __m512 e = exp_nonpos16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, z + i), l));
    _mm512_mask_storeu_ps(p + i, k, e);
    total = _mm512_mask_add_ps(total, k, total, e);
  }
  return _mm512_reduce_add_ps(total);
}

// Sums over one tile of exp(z - m), exp(z - m)(z - m), p_f (z_f - z), and the counts
// of z above the two rank thresholds.
static void tile_sums(const float* z, int64_t width, float m, float zt, float zf_top, const float* p_final,
                      const float* z_final, float* s_out, float* u_out, float* kl_out, int64_t* above_t,
                      int64_t* above_f) {
  __m512 s = _mm512_setzero_ps(), u = s, kl = s;
  const __m512 mv = _mm512_set1_ps(m), tv = _mm512_set1_ps(zt), fv = _mm512_set1_ps(zf_top);
  int64_t ct = 0, cf = 0;
  for (int64_t i = 0; i < width; i += 16) {
    const __mmask16 k = lanes(width - i);
    const __m512 zi = _mm512_maskz_loadu_ps(k, z + i);
    const __m512 d = _mm512_sub_ps(zi, mv);
    const __m512 e = exp_nonpos16(d);
    s = _mm512_mask_add_ps(s, k, s, e);
    u = _mm512_mask3_fmadd_ps(e, d, u, k);
    if (p_final) {
      const __m512 gap = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, z_final + i), zi);
      kl = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, p_final + i), gap, kl);
    }
    ct += __builtin_popcount(_mm512_mask_cmp_ps_mask(k, zi, tv, _CMP_GT_OQ));
    cf += __builtin_popcount(_mm512_mask_cmp_ps_mask(k, zi, fv, _CMP_GT_OQ));
  }
  *s_out = _mm512_reduce_add_ps(s);
  *u_out = _mm512_reduce_add_ps(u);
  *kl_out = _mm512_reduce_add_ps(kl);
  *above_t = ct;
  *above_f = cf;
}
#else
float tile_max(const float* z, int64_t width) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < width; ++i) mx = z[i] > mx ? z[i] : mx;
  return mx;
}

float exp_shifted(const float* z, float shift, float* p, int64_t width) {
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < width; ++i) {
    p[i] = exp_nonpos_inline(z[i] - shift);
    total += p[i];
  }
  return total;
}

static void tile_sums(const float* z, int64_t width, float m, float zt, float zf_top, const float* p_final,
                      const float* z_final, float* s_out, float* u_out, float* kl_out, int64_t* above_t,
                      int64_t* above_f) {
  float s = 0.f, u = 0.f, kl = 0.f;
  int64_t ct = 0, cf = 0;
  for (int64_t i = 0; i < width; ++i) {
    const float d = z[i] - m;
    const float e = exp_nonpos_inline(d);
    s += e;
    u += e * d;
    if (p_final) kl += p_final[i] * (z_final[i] - z[i]);
    ct += z[i] > zt;
    cf += z[i] > zf_top;
  }
  *s_out = s;
  *u_out = u;
  *kl_out = kl;
  *above_t = ct;
  *above_f = cf;
}
#endif

void fold_tile(RowState& st, const RowQuery& q, const float* z, int64_t v0, int64_t width,
               const float* p_final, const float* z_final) {
  const float top = tile_max(z, width);
  if (top > st.m) {  // rescale s and u to the new max
    if (st.s > 0.f) {
      const float shift = st.m - top;
      const float scale = exp_nonpos_inline(shift);
      st.u = scale * (st.u + shift * st.s);
      st.s *= scale;
    }
    st.m = top;
  }
  float s, u, kl;
  int64_t above_t, above_f;
  tile_sums(z, width, st.m, q.target_logit, q.final_top1_logit, p_final, z_final, &s, &u, &kl, &above_t,
            &above_f);
  st.s += s;
  st.u += u;
  st.kl += kl;
  st.rank_target += above_t;
  st.rank_final_top1 += above_f;
  if (q.target_id >= v0 && q.target_id < v0 + width) {
    const float own = z[q.target_id - v0];
    st.seen_target_logit = own;
    st.rank_target -= own > q.target_logit;
  }
  if (q.final_top1 >= v0 && q.final_top1 < v0 + width) st.rank_final_top1 -= z[q.final_top1 - v0] > q.final_top1_logit;

  // Top-k: only a tile whose max beats the current k-th value can change it.
  if (st.filled < st.k || top > st.top_logit[st.k - 1]) {
    for (int64_t i = 0; i < width; ++i) {
      if (st.filled < st.k || z[i] > st.top_logit[st.k - 1]) topk_insert(st, z[i], v0 + i);
    }
  }
}

}  // namespace fusedlens
