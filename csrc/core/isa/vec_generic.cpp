// The vector kernels for any CPU, compiled for the baseline ISA (the compiler vectorises
// the `omp simd` loops as far as that allows).
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

float exp_shifted(const float* z, float shift, float* p, int64_t width) {
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < width; ++i) {
    p[i] = exp_nonpos_scalar(z[i] - shift);
    total += p[i];
  }
  return total;
}

// Two loops, so that neither has a branch: both vectorise with the baseline's SSE2.
void tile_sums(const float* z, int64_t width, float m, float zt, float zf, const float* p_final, const float* z_final,
               float* s_out, float* u_out, float* kl_out, int64_t* above_t, int64_t* above_f, float* top_out,
               float* e_out) {
  float s = 0.f, u = 0.f, kl = 0.f, top = -std::numeric_limits<float>::infinity();
  int32_t ct = 0, cf = 0;  // a tile is far shorter than 2^31
#pragma omp simd reduction(+ : s, u, ct, cf) reduction(max : top)
  for (int64_t i = 0; i < width; ++i) {
    top = z[i] > top ? z[i] : top;
    const float d = z[i] - m;
    const float e = exp_nonpos_scalar(d);
    s += e;
    u += e * d;
    ct += z[i] > zt ? 1 : 0;
    cf += z[i] > zf ? 1 : 0;
  }
  if (e_out) {  // its own loop, so the one above stays branch-free
#pragma omp simd
    for (int64_t i = 0; i < width; ++i) e_out[i] = exp_nonpos_scalar(z[i] - m);
  }
  if (p_final) {
#pragma omp simd reduction(+ : kl)
    for (int64_t i = 0; i < width; ++i) kl += p_final[i] * (z_final[i] - z[i]);
  }
  *s_out = s, *u_out = u, *kl_out = kl, *above_t = ct, *above_f = cf, *top_out = top;
}

void set_sums(const float* e, int64_t width, const int8_t* set_id, const float*, int n_sets, float* out) {
  for (int64_t i = 0; i < width; ++i)
    if (set_id[i] >= 0 && set_id[i] < n_sets) out[set_id[i]] += e[i];
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
