// The vector kernels with AVX-512 (16 lanes, masked tails), whatever the build's -march.
#include "target_avx512.h"

#include <cstdint>
#include <cstring>
#include <limits>

#include "../isa.h"
#include "count_dispatch.h"
#include "exp_poly.h"

namespace fusedlens {
namespace {

inline __m512 exp_nonpos16(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_LT_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpCoef[0]);
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpCoef[i]));
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~tiny), p, n);
}

inline __mmask16 lanes(int64_t left) {
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

void tile_sums(const float* z, int64_t width, float m, float zt, float zf, const float* p_final, const float* z_final,
               float* s_out, float* u_out, float* kl_out, int64_t* above_t, int64_t* above_f, float* top_out,
               float* e_out) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 s = _mm512_setzero_ps(), u = s, kl = s, top = ninf;
  const __m512 mv = _mm512_set1_ps(m), tv = _mm512_set1_ps(zt), fv = _mm512_set1_ps(zf);
  __m512i ct = _mm512_setzero_si512(), cf = ct;
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t i = 0; i < width; i += 16) {
    const __mmask16 k = lanes(width - i);
    const __m512 zi = _mm512_maskz_loadu_ps(k, z + i);
    top = _mm512_mask_max_ps(top, k, top, zi);
    const __m512 d = _mm512_sub_ps(zi, mv);
    const __m512 e = exp_nonpos16(d);
    if (e_out) _mm512_mask_storeu_ps(e_out + i, k, e);
    s = _mm512_mask_add_ps(s, k, s, e);
    u = _mm512_mask3_fmadd_ps(e, d, u, k);
    if (p_final) {
      const __m512 gap = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, z_final + i), zi);
      kl = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, p_final + i), gap, kl);
    }
    ct = _mm512_mask_add_epi32(ct, _mm512_mask_cmp_ps_mask(k, zi, tv, _CMP_GT_OQ), ct, one);
    cf = _mm512_mask_add_epi32(cf, _mm512_mask_cmp_ps_mask(k, zi, fv, _CMP_GT_OQ), cf, one);
  }
  *s_out = _mm512_reduce_add_ps(s), *u_out = _mm512_reduce_add_ps(u), *kl_out = _mm512_reduce_add_ps(kl);
  *above_t = _mm512_reduce_add_epi32(ct), *above_f = _mm512_reduce_add_epi32(cf);
  *top_out = _mm512_reduce_max_ps(top);
}

// Dense sets, two forms of the same sums (a set's sum is a plain sum of its members' exps in both).
// Columns: kU vectors of 16 exps at a time, per vector one FMA with each set's 0/1 column
// (TileSets::member; e * 1 and e * 0 are exact), kU chosen so that a few sets still make 8 and more
// independent chains. Compare: per vector, a compare of the ids and a masked add per set. On a Zen 4
// (epilogue-bound shape, d 16) the columns cost half as much at 3 sets, the same at 8, and 1.8 x as
// much at 16, where 16 columns of a vocabulary tile (64 bytes a token) no longer stay in cache; so
// up to 8 sets take the columns. A block whose ids are all -1 (no member) is skipped in both.
template <int N, int kU>
void set_sums_cols(const float* e, int64_t width, const TileSets& sets, float* out) {
  __m512 acc[kU][N];
  for (auto& a : acc)
    for (auto& x : a) x = _mm512_setzero_ps();
  const int64_t full = width / (16 * kU) * (16 * kU);
  for (int64_t i = 0; i < full; i += 16 * kU) {
    uint64_t none[2 * kU];  // ids all -1: no member in these 16 * kU positions
    std::memcpy(none, sets.id + i, sizeof none);
    bool skip = true;
    for (int u = 0; u < 2 * kU; ++u) skip &= none[u] == ~uint64_t{0};
    if (skip) continue;
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u) {
      const __m512 ev = _mm512_loadu_ps(e + i + 16 * u);
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j)
        acc[u][j] = _mm512_fmadd_ps(ev, _mm512_loadu_ps(sets.member + j * sets.stride + i + 16 * u), acc[u][j]);
    }
  }
  for (int64_t i = full; i < width; i += 16) {
    const __mmask16 k = lanes(width - i);
    const __m512 ev = _mm512_maskz_loadu_ps(k, e + i);
#pragma GCC unroll 16
    for (int j = 0; j < N; ++j)
      acc[0][j] = _mm512_fmadd_ps(ev, _mm512_maskz_loadu_ps(k, sets.member + j * sets.stride + i), acc[0][j]);
  }
  for (int j = 0; j < N; ++j) {
    __m512 t = acc[0][j];
    for (int u = 1; u < kU; ++u) t = _mm512_add_ps(t, acc[u][j]);
    out[j] += _mm512_reduce_add_ps(t);
  }
}

template <int N>
void set_sums_compare(const float* ev, int64_t width, const int8_t* set_id, float* out) {
  __m512 acc[N];
  for (int j = 0; j < N; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < width; i += 16) {
    const __mmask16 k = lanes(width - i);
    const __m512i ids = _mm512_mask_cvtepi8_epi32(_mm512_set1_epi32(-1), k, _mm_maskz_loadu_epi8(k, set_id + i));
    const __mmask16 member = _mm512_cmpge_epi32_mask(ids, _mm512_setzero_si512());
    if (!member) continue;
    const __m512 e = _mm512_maskz_loadu_ps(k, ev + i);
#pragma GCC unroll 16
    for (int j = 0; j < N; ++j)
      acc[j] = _mm512_mask_add_ps(acc[j], _mm512_cmpeq_epi32_mask(ids, _mm512_set1_epi32(j)), acc[j], e);
  }
  for (int j = 0; j < N; ++j) out[j] += _mm512_reduce_add_ps(acc[j]);
}

void set_sums(const float* e, int64_t width, const TileSets& sets, float* out) {
  with_count_16(sets.n, [&](auto n) {
    constexpr int N = decltype(n)::value;
    if constexpr (N <= 4)
      set_sums_cols<N, 4>(e, width, sets, out);
    else if constexpr (N <= 8)
      set_sums_cols<N, 2>(e, width, sets, out);
    else
      set_sums_compare<N>(e, width, sets.id, out);
  });
}

// 16 at a time, the positions above the threshold compressed into idx.
int64_t above(const float* z, int64_t width, float threshold, int32_t* idx) {
  const __m512 t = _mm512_set1_ps(threshold);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t n = 0;
  for (int64_t i = 0; i < width; i += 16) {
    const __mmask16 live = width - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (width - i)) - 1);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(live, _mm512_maskz_loadu_ps(live, z + i), t, _CMP_GT_OQ);
    if (hit) {
      _mm512_mask_compressstoreu_epi32(idx + n, hit, _mm512_add_epi32(lanes, _mm512_set1_epi32(int(i))));
      n += __builtin_popcount(hit);
    }
  }
  return n;
}

}  // namespace

const VecKernels& vec_kernels_avx512() {
  static const VecKernels k{tile_max, exp_shifted, tile_sums, above, set_sums};
  return k;
}

}  // namespace fusedlens
#include "target_end.h"
