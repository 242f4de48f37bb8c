#include "kl_grad.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace fusedlens {

namespace {

// exp(x) for x <= 0 as 2^k · e^r, |r| <= ln2/2, e^r by its series to r^7 (relative
// error < 2e-7); below -87 the result is flushed to 0. Inline so `omp simd` loops
// vectorise it.
inline float exp_le0(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723e-6f;
  constexpr float kInvFact[8] = {1.f, 1.f, 0.5f, 1.f / 6, 1.f / 24, 1.f / 120, 1.f / 720, 1.f / 5040};
  const bool flush = x < -87.f;
  const float xc = flush ? -87.f : x;
  const float k = std::floor(xc * kLog2e + 0.5f);
  const float r = xc - k * kLn2Hi - k * kLn2Lo;
  float poly = kInvFact[7];
  for (int i = 6; i >= 0; --i) poly = poly * r + kInvFact[i];
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  return flush ? 0.f : poly * two_k;
}

}  // namespace

void SoftmaxState::reset() {
  m = -std::numeric_limits<float>::infinity();
  s = 0.f;
}

float SoftmaxState::lse() const { return m + std::log(s); }

float fold_softmax(SoftmaxState& st, const float* z, int64_t width, float* e) {
  float tile_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : tile_max)
  for (int64_t i = 0; i < width; ++i) tile_max = z[i] > tile_max ? z[i] : tile_max;
  float factor = 1.f;
  if (tile_max > st.m) {
    factor = st.s > 0.f ? exp_le0(st.m - tile_max) : 0.f;
    st.s *= factor;
    st.m = tile_max;
  }
  const float m = st.m;
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < width; ++i) {
    e[i] = exp_le0(z[i] - m);
    sum += e[i];
  }
  st.s += sum;
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
