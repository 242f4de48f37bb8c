// The float32 tile GEMM with AVX-512F: 12 x 32 register tile (24 accumulators, two B
// vectors and a broadcast of the 32 zmm registers).
#include "target_avx512.h"

#include "../f32_gemm.h"
#include "f32_pack.h"

namespace fusedlens {
namespace {
constexpr int kMr = 12, kNr = 32;

void kernel_12x32(const float* pa, const float* pb, int64_t kc, float* c, int64_t ldc, bool accumulate) {
  __m512 c0[kMr], c1[kMr];
#pragma GCC unroll 12
  for (int r = 0; r < kMr; ++r) {
    c0[r] = accumulate ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
    c1[r] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < kc; ++i) {
    const __m512 b0 = _mm512_loadu_ps(pb + i * kNr), b1 = _mm512_loadu_ps(pb + i * kNr + 16);
#pragma GCC unroll 12
    for (int r = 0; r < kMr; ++r) {
      const __m512 a = _mm512_set1_ps(pa[i * kMr + r]);
      c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < kMr; ++r) {
    _mm512_storeu_ps(c + r * ldc, c0[r]);
    _mm512_storeu_ps(c + r * ldc + 16, c1[r]);
  }
}

}  // namespace

const F32Gemm& f32_gemm_avx512() { return f32_table<kMr, kNr, 576, kernel_12x32>(); }

}  // namespace fusedlens
#include "target_end.h"
