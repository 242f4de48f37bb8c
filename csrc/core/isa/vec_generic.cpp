// The vector kernels for any CPU, compiled for the baseline ISA: four-lane vectors in GCC's portable
// vector types where it matters (the exps), `omp simd` loops elsewhere.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "../isa.h"
#include "exp_poly.h"

namespace fusedlens {
namespace {

float tile_max(const float* z, int64_t width) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < width; ++i) mx = z[i] > mx ? z[i] : mx;
  return mx;
}

// Four lanes in GCC's portable vector types (SSE2 on x86-64, NEON on aarch64): `omp simd` loops
// around the scalar exp stayed scalar (150 cycles per 8 logits on Zen 3, the AVX2 kernel's 25).
// Each lane computes exactly the scalar exp_nonpos_scalar; only the order of the sums differs.
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

inline v4f load4(const float* p) {
  v4f v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void store4(float* p, v4f v) { __builtin_memcpy(p, &v, sizeof v); }

inline v4f exp4(v4f x) {
  const v4i tiny = x < -87.0f;
  x = tiny ? v4f{} - 87.0f : x;
  const v4f n = (x * kLog2e + 12582912.f) - 12582912.f;
  const v4f r = (x - n * kLn2Hi) - n * kLn2Lo;
  v4f p = v4f{} + kExpCoef[0];
  for (int i = 1; i < 8; ++i) p = p * r + kExpCoef[i];
  const v4i bits = (__builtin_convertvector(n, v4i) + 127) << 23;
  v4f scale;  // 2^n: the bits as floats (a copy, not a cast: a cast breaks strict aliasing)
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return tiny ? v4f{} : p * scale;
}

inline float hsum4(v4f v) { return (v[0] + v[1]) + (v[2] + v[3]); }

float exp_shifted(const float* z, float shift, float* p, int64_t width) {
  v4f total = {};
  int64_t i = 0;
  for (; i + 4 <= width; i += 4) {
    const v4f e = exp4(load4(z + i) - shift);
    store4(p + i, e);
    total += e;
  }
  float t = hsum4(total);
  for (; i < width; ++i) t += p[i] = exp_nonpos_scalar(z[i] - shift);
  return t;
}

void tile_sums(const float* z, int64_t width, float m, float zt, float zf, const float* p_final, const float* z_final,
               float* s_out, float* u_out, float* kl_out, int64_t* above_t, int64_t* above_f, float* top_out,
               float* e_out) {
  const float ninf = -std::numeric_limits<float>::infinity();
  v4f s = {}, u = {}, kl = {}, top = v4f{} + ninf;
  v4i ct = {}, cf = {};  // minus the all-ones compare masks: counts per lane
  int64_t i = 0;
  for (; i + 4 <= width; i += 4) {
    const v4f zi = load4(z + i), d = zi - m, e = exp4(d);
    if (e_out) store4(e_out + i, e);
    top = zi > top ? zi : top;
    s += e;
    u += e * d;
    if (p_final) kl += load4(p_final + i) * (load4(z_final + i) - zi);
    ct -= zi > zt;
    cf -= zi > zf;
  }
  float ss = hsum4(s), uu = hsum4(u), kk = hsum4(kl), tt = std::max(std::max(top[0], top[1]), std::max(top[2], top[3]));
  int64_t a = int64_t{ct[0]} + ct[1] + ct[2] + ct[3], b = int64_t{cf[0]} + cf[1] + cf[2] + cf[3];
  for (; i < width; ++i) {
    const float d = z[i] - m, e = exp_nonpos_scalar(d);
    if (e_out) e_out[i] = e;
    tt = z[i] > tt ? z[i] : tt;
    ss += e;
    uu += e * d;
    if (p_final) kk += p_final[i] * (z_final[i] - z[i]);
    a += z[i] > zt;
    b += z[i] > zf;
  }
  *s_out = ss, *u_out = uu, *kl_out = kk, *above_t = a, *above_f = b, *top_out = tt;
}

void set_sums(const float* e, int64_t width, const TileSets& sets, float* out) {
  for (int64_t i = 0; i < width; ++i)
    if (sets.id[i] >= 0 && sets.id[i] < sets.n) out[sets.id[i]] += e[i];
}

int64_t above(const float* z, int64_t width, float threshold, int32_t* idx) {
  int64_t n = 0;
  for (int64_t i = 0; i < width; ++i) {
    idx[n] = static_cast<int32_t>(i);
    n += z[i] > threshold;  // branch-free: most positions are below
  }
  return n;
}

}  // namespace

const VecKernels& vec_kernels_generic() {
  static const VecKernels k{tile_max, exp_shifted, tile_sums, above, set_sums};
  return k;
}

}  // namespace fusedlens
