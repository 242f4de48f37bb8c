// exp(x) for x <= 64 as every ISA variant computes it (x <= 0 in a softmax against its
// max; the one-pass tile sums go up to 64 above their shift): round-to-nearest range
// reduction by ln 2 (split in two parts), Taylor to degree 7 on |r| <= ln2/2 (truncation
// < 6e-9 relative), exp(x < -87) flushed to 0. The vector versions use the same constants.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fusedlens {

constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723e-6f;
constexpr float kExpCoef[8] = {1.f / 5040.f, 1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f};

static inline float exp_nonpos_scalar(float x) {
  const bool tiny = x < -87.0f;
  x = tiny ? -87.0f : x;
  // round to nearest even by the 1.5 * 2^23 trick: what nearbyint gives (|x log2 e| < 2^22),
  // in plain arithmetic that the compiler vectorises with SSE2 alone (roundps is SSE4.1)
  const float n = (x * kLog2e + 12582912.f) - 12582912.f;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = kExpCoef[0];
  for (int i = 1; i < 8; ++i) p = p * r + kExpCoef[i];
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return tiny ? 0.f : p * scale;
}

}  // namespace fusedlens
