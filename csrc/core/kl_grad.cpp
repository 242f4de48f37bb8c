#include "kl_grad.h"

#include <cmath>
#include <limits>

#include "lens_epilogue.h"

namespace fusedlens {

void SoftmaxState::reset() {
  m = -std::numeric_limits<float>::infinity();
  s = 0.f;
}

float SoftmaxState::lse() const { return m + std::log(s); }

float fold_softmax(SoftmaxState& st, const float* z, int64_t width, float* e) {
  const float top = tile_max(z, width);
  float factor = 1.f;
  if (top > st.m) {
    factor = st.s > 0.f ? exp_nonpos(st.m - top) : 0.f;
    st.s *= factor;
    st.m = top;
  }
  st.s += exp_shifted(z, st.m, e, width);
  return factor;
}

float kl_tile_term(const float* e_f, const float* z_f, const float* z, int64_t width) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < width; ++i) acc += e_f[i] * (z_f[i] - z[i]);
  return acc;
}

void times_cap_slope(const float* e, const float* z, float cap, float* out, int64_t width) {
  const float inv = 1.f / cap;
#pragma omp simd
  for (int64_t i = 0; i < width; ++i) {
    const float t = z[i] * inv;
    out[i] = e[i] * (1.f - t * t);
  }
}

}  // namespace fusedlens
