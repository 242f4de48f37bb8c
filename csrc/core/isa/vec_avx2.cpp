// The vector kernels with AVX2 + FMA (8 lanes; tails by masked loads), for CPUs without
// AVX-512 such as AMD Zen 3: the same arithmetic as the AVX-512 table.
#include "target_avx2.h"

#include <limits>

#include "../isa.h"
#include "count_dispatch.h"
#include "exp_poly.h"

namespace fusedlens {
namespace {

inline __m256 exp_nonpos8(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_LT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpCoef[0]);
  for (int i = 1; i < 8; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpCoef[i]));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

// All-ones in the first `left` lanes (left < 8), for masked loads of a tile's tail.
inline __m256i tail_mask(int64_t left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

inline float hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

float tile_max(const float* z, int64_t width) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 a = ninf, b = ninf;
  int64_t i = 0;
  for (; i + 16 <= width; i += 16) {  // two chains: max has latency
    a = _mm256_max_ps(a, _mm256_loadu_ps(z + i));
    b = _mm256_max_ps(b, _mm256_loadu_ps(z + i + 8));
  }
  for (; i < width; i += 8) {
    const __m256i k = tail_mask(width - i);
    a = _mm256_max_ps(a, _mm256_blendv_ps(ninf, _mm256_maskload_ps(z + i, k), _mm256_castsi256_ps(k)));
  }
  return hmax(_mm256_max_ps(a, b));
}

float exp_shifted(const float* z, float shift, float* p, int64_t width) {
  __m256 total = _mm256_setzero_ps();
  const __m256 l = _mm256_set1_ps(shift);
  for (int64_t i = 0; i < width; i += 8) {
    const __m256i k = width - i >= 8 ? _mm256_set1_epi32(-1) : tail_mask(width - i);
    const __m256 e = _mm256_and_ps(exp_nonpos8(_mm256_sub_ps(_mm256_maskload_ps(z + i, k), l)), _mm256_castsi256_ps(k));
    _mm256_maskstore_ps(p + i, k, e);
    total = _mm256_add_ps(total, e);
  }
  return hsum(total);
}

void tile_sums(const float* z, int64_t width, float m, float zt, float zf, const float* p_final, const float* z_final,
               float* s_out, float* u_out, float* kl_out, int64_t* above_t, int64_t* above_f, float* top_out,
               float* e_out) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 s = _mm256_setzero_ps(), u = s, kl = s, top = ninf;
  const __m256 mv = _mm256_set1_ps(m), tv = _mm256_set1_ps(zt), fv = _mm256_set1_ps(zf);
  __m256i ct = _mm256_setzero_si256(), cf = ct;  // minus the all-ones compare masks: counts per lane
  for (int64_t i = 0; i < width; i += 8) {
    const __m256i ki = width - i >= 8 ? _mm256_set1_epi32(-1) : tail_mask(width - i);
    const __m256 k = _mm256_castsi256_ps(ki);
    const __m256 zi = _mm256_maskload_ps(z + i, ki);
    top = _mm256_max_ps(top, _mm256_blendv_ps(ninf, zi, k));
    const __m256 d = _mm256_sub_ps(zi, mv);
    const __m256 e = _mm256_and_ps(exp_nonpos8(d), k);
    if (e_out) _mm256_maskstore_ps(e_out + i, ki, e);
    s = _mm256_add_ps(s, e);
    u = _mm256_fmadd_ps(e, d, u);
    if (p_final) {
      const __m256 gap = _mm256_sub_ps(_mm256_maskload_ps(z_final + i, ki), zi);
      kl = _mm256_fmadd_ps(_mm256_maskload_ps(p_final + i, ki), gap, kl);
    }
    ct = _mm256_sub_epi32(ct, _mm256_castps_si256(_mm256_and_ps(_mm256_cmp_ps(zi, tv, _CMP_GT_OQ), k)));
    cf = _mm256_sub_epi32(cf, _mm256_castps_si256(_mm256_and_ps(_mm256_cmp_ps(zi, fv, _CMP_GT_OQ), k)));
  }
  *s_out = hsum(s), *u_out = hsum(u), *kl_out = hsum(kl), *top_out = hmax(top);
  alignas(32) int32_t c[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(c), ct);
  _mm256_store_si256(reinterpret_cast<__m256i*>(c + 8), cf);
  *above_t = int64_t{c[0]} + c[1] + c[2] + c[3] + c[4] + c[5] + c[6] + c[7];
  *above_f = int64_t{c[8]} + c[9] + c[10] + c[11] + c[12] + c[13] + c[14] + c[15];
}

// 8 at a time: a block with no member costs a load and a test; otherwise, per set, a compare
// and a masked add of the exps tile_sums stored. N is the number of sets, a compile-time constant so that the
// accumulators stay in registers.
template <int N>
void set_sums_n(const float* ev, int64_t width, const int8_t* set_id, float* out) {
  __m256 acc[N];
  for (int j = 0; j < N; ++j) acc[j] = _mm256_setzero_ps();
  const __m256i none = _mm256_set1_epi32(-1);
  for (int64_t i = 0; i < width; i += 8) {
    __m256i ids;
    if (width - i >= 8) {
      ids = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(set_id + i)));
    } else {
      alignas(32) int32_t tail[8];
      for (int c = 0; c < 8; ++c) tail[c] = i + c < width ? set_id[i + c] : -1;
      ids = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
    }
    if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(ids, none))) == 0) continue;
    const __m256i ki = width - i >= 8 ? _mm256_set1_epi32(-1) : tail_mask(width - i);
    const __m256 e = _mm256_maskload_ps(ev + i, ki);
#pragma GCC unroll 16
    for (int j = 0; j < N; ++j)
      acc[j] = _mm256_add_ps(acc[j], _mm256_and_ps(e, _mm256_castsi256_ps(_mm256_cmpeq_epi32(ids, _mm256_set1_epi32(j)))));
  }
  for (int j = 0; j < N; ++j) out[j] += hsum(acc[j]);
}

void set_sums(const float* e, int64_t width, const int8_t* set_id, int n_sets, float* out) {
  with_count_16(n_sets, [&](auto n) { set_sums_n<decltype(n)::value>(e, width, set_id, out); });
}

// 8 at a time; only a block with a position above the threshold is looked at closer.
int64_t above(const float* z, int64_t width, float threshold, int32_t* idx) {
  const __m256 t = _mm256_set1_ps(threshold);
  int64_t n = 0, i = 0;
  for (; i + 8 <= width; i += 8) {
    unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z + i), t, _CMP_GT_OQ)));
    while (mask) {
      idx[n++] = static_cast<int32_t>(i + __builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
  for (; i < width; ++i)
    if (z[i] > threshold) idx[n++] = static_cast<int32_t>(i);
  return n;
}

}  // namespace

const VecKernels& vec_kernels_avx2() {
  static const VecKernels k{tile_max, exp_shifted, tile_sums, above, set_sums};
  return k;
}

}  // namespace fusedlens
#include "target_end.h"
