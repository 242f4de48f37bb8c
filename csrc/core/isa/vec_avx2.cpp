// The vector kernels with AVX2 + FMA (8 lanes; tails by masked loads), for CPUs without
// AVX-512 such as AMD Zen 3: the same arithmetic as the AVX-512 table.
#include "target_avx2.h"

#include <cstring>
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

// Full vectors with plain loads and stores, the tile's tail (if any) with masked ones: a masked
// store is microcoded on AMD Zen 2/3 (one per ~12 cycles), and storing every exp through one
// cost the token-set sweep more than its sums. The arithmetic per lane is the same either way.
float exp_shifted(const float* z, float shift, float* p, int64_t width) {
  __m256 total = _mm256_setzero_ps();
  const __m256 l = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= width; i += 8) {
    const __m256 e = exp_nonpos8(_mm256_sub_ps(_mm256_loadu_ps(z + i), l));
    _mm256_storeu_ps(p + i, e);
    total = _mm256_add_ps(total, e);
  }
  if (i < width) {
    const __m256i k = tail_mask(width - i);
    const __m256 e = _mm256_and_ps(exp_nonpos8(_mm256_sub_ps(_mm256_maskload_ps(z + i, k), l)), _mm256_castsi256_ps(k));
    _mm256_maskstore_ps(p + i, k, e);
    total = _mm256_add_ps(total, e);
  }
  return hsum(total);
}

// The running sums of tile_sums, one vector of lanes each.
struct SumsAcc {
  __m256 s, u, kl, top;
  __m256i ct, cf;  // minus the all-ones compare masks: counts per lane
};

// One vector of tile_sums; Tail: only the lanes of ki are in the tile.
template <bool Tail>
inline void sums_step(SumsAcc& a, const float* z, const float* p_final, const float* z_final, __m256 mv, __m256 tv,
                      __m256 fv, float* e_out, __m256i ki) {
  const __m256 k = _mm256_castsi256_ps(ki);
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 zi = Tail ? _mm256_maskload_ps(z, ki) : _mm256_loadu_ps(z);
  a.top = _mm256_max_ps(a.top, Tail ? _mm256_blendv_ps(ninf, zi, k) : zi);
  const __m256 d = _mm256_sub_ps(zi, mv);
  __m256 e = exp_nonpos8(d);
  if (Tail) e = _mm256_and_ps(e, k);
  if (e_out) {
    if (Tail) _mm256_maskstore_ps(e_out, ki, e);
    else _mm256_storeu_ps(e_out, e);
  }
  a.s = _mm256_add_ps(a.s, e);
  a.u = _mm256_fmadd_ps(e, d, a.u);
  if (p_final) {
    const __m256 zf = Tail ? _mm256_maskload_ps(z_final, ki) : _mm256_loadu_ps(z_final);
    const __m256 pf = Tail ? _mm256_maskload_ps(p_final, ki) : _mm256_loadu_ps(p_final);
    a.kl = _mm256_fmadd_ps(pf, _mm256_sub_ps(zf, zi), a.kl);
  }
  __m256 gt = _mm256_cmp_ps(zi, tv, _CMP_GT_OQ), gf = _mm256_cmp_ps(zi, fv, _CMP_GT_OQ);
  if (Tail) gt = _mm256_and_ps(gt, k), gf = _mm256_and_ps(gf, k);
  a.ct = _mm256_sub_epi32(a.ct, _mm256_castps_si256(gt));
  a.cf = _mm256_sub_epi32(a.cf, _mm256_castps_si256(gf));
}

void tile_sums(const float* z, int64_t width, float m, float zt, float zf, const float* p_final, const float* z_final,
               float* s_out, float* u_out, float* kl_out, int64_t* above_t, int64_t* above_f, float* top_out,
               float* e_out) {
  SumsAcc a{_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
            _mm256_set1_ps(-std::numeric_limits<float>::infinity()), _mm256_setzero_si256(), _mm256_setzero_si256()};
  const __m256 mv = _mm256_set1_ps(m), tv = _mm256_set1_ps(zt), fv = _mm256_set1_ps(zf);
  const __m256i all = _mm256_set1_epi32(-1);
  const int64_t full = width / 8 * 8;
  if (p_final) {  // two loops, so the common one (no KL) carries no branch
    for (int64_t i = 0; i < full; i += 8)
      sums_step<false>(a, z + i, p_final + i, z_final + i, mv, tv, fv, e_out ? e_out + i : nullptr, all);
  } else {
    for (int64_t i = 0; i < full; i += 8)
      sums_step<false>(a, z + i, nullptr, nullptr, mv, tv, fv, e_out ? e_out + i : nullptr, all);
  }
  if (full < width)
    sums_step<true>(a, z + full, p_final ? p_final + full : nullptr, z_final ? z_final + full : nullptr, mv, tv, fv,
                    e_out ? e_out + full : nullptr, tail_mask(width - full));
  *s_out = hsum(a.s), *u_out = hsum(a.u), *kl_out = hsum(a.kl), *top_out = hmax(a.top);
  alignas(32) int32_t c[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(c), a.ct);
  _mm256_store_si256(reinterpret_cast<__m256i*>(c + 8), a.cf);
  *above_t = int64_t{c[0]} + c[1] + c[2] + c[3] + c[4] + c[5] + c[6] + c[7];
  *above_f = int64_t{c[8]} + c[9] + c[10] + c[11] + c[12] + c[13] + c[14] + c[15];
}

// Sets [j0, j0 + N) over the whole vectors [0, full): per vector of 8 exps, one FMA with each set's
// membership column (1 or 0; e * 1 and e * 0 are exact, so a set's sum is a plain sum of its
// members' exps). That is a load and an FMA per set and 8 positions: a compare and a masked add per
// set (the AVX-512 kernel's form before it took this one too), or a broadcast per position times a
// one-hot row, cost more on Zen 3. kU vectors at a time, so that a few sets make 8 independent chains.
template <int N, int kU>
inline void set_sums_cols(const float* e, int64_t full, const TileSets& sets, int j0, float* out) {
  __m256 acc[kU][N];
  for (auto& a : acc)
    for (auto& x : a) x = _mm256_setzero_ps();
  const float* member = sets.member + j0 * sets.stride;
  for (int64_t i = 0; i < full; i += 8 * kU) {
    uint64_t none[kU];  // ids all -1: no member in these 8 * kU positions
    std::memcpy(none, sets.id + i, sizeof none);
    bool skip = true;
    for (int u = 0; u < kU; ++u) skip &= none[u] == ~uint64_t{0};
    if (skip) continue;
#pragma GCC unroll 2
    for (int u = 0; u < kU; ++u) {
      const __m256 ev = _mm256_loadu_ps(e + i + 8 * u);
#pragma GCC unroll 8
      for (int j = 0; j < N; ++j)
        acc[u][j] = _mm256_fmadd_ps(ev, _mm256_loadu_ps(member + j * sets.stride + i + 8 * u), acc[u][j]);
    }
  }
  for (int j = 0; j < N; ++j) {
    __m256 t = acc[0][j];
    for (int u = 1; u < kU; ++u) t = _mm256_add_ps(t, acc[u][j]);
    out[j0 + j] += hsum(t);
  }
}

// Up to 8 sets a pass (16 accumulators and their operands would not fit the 16 registers);
// the positions after the last whole block of a pass one at a time.
void set_sums(const float* e, int64_t width, const TileSets& sets, float* out) {
  for (int j0 = 0; j0 < sets.n; j0 += 8) {
    const int n = sets.n - j0 < 8 ? sets.n - j0 : 8;  // not std::min: a template instantiated here is AVX2 code
    const int64_t full = n <= 4 ? width / 16 * 16 : width / 8 * 8;
    with_count_16(n, [&](auto c) {
      constexpr int C = decltype(c)::value;
      if constexpr (C <= 4)
        set_sums_cols<C, 2>(e, full, sets, j0, out);
      else if constexpr (C <= 8)
        set_sums_cols<C, 1>(e, full, sets, j0, out);
    });
    for (int64_t i = full; i < width; ++i)
      if (sets.id[i] >= j0 && sets.id[i] < j0 + n) out[sets.id[i]] += e[i];
  }
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
