// The float32 tile GEMM with AVX2 + FMA: 6 x 16 register tile (12 accumulators, two B
// vectors and a broadcast fill the 16 ymm registers). Named accumulators: GCC keeps
// arrays of __m256 in memory here.
#include "target_avx2.h"

#include "../f32_gemm.h"
#include "f32_pack.h"

namespace fusedlens {
namespace {
constexpr int kMr = 6, kNr = 16;

void kernel_6x16(const float* pa, const float* pb, int64_t kc, float* c, int64_t ldc, bool accumulate) {
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
#define FL_LOAD(r)                                                                 \
  c##r##0 = accumulate ? _mm256_loadu_ps(c + r * ldc) : _mm256_setzero_ps(); \
  c##r##1 = accumulate ? _mm256_loadu_ps(c + r * ldc + 8) : _mm256_setzero_ps();
  FL_LOAD(0) FL_LOAD(1) FL_LOAD(2) FL_LOAD(3) FL_LOAD(4) FL_LOAD(5)
#undef FL_LOAD
  for (int64_t i = 0; i < kc; ++i) {
    const __m256 b0 = _mm256_loadu_ps(pb + i * kNr), b1 = _mm256_loadu_ps(pb + i * kNr + 8);
    __m256 a;
#define FL_STEP(r)                               \
  a = _mm256_broadcast_ss(pa + i * kMr + r);     \
  c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0); \
  c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);
    FL_STEP(0) FL_STEP(1) FL_STEP(2) FL_STEP(3) FL_STEP(4) FL_STEP(5)
#undef FL_STEP
  }
#define FL_STORE(r)                           \
  _mm256_storeu_ps(c + r * ldc, c##r##0); \
  _mm256_storeu_ps(c + r * ldc + 8, c##r##1);
  FL_STORE(0) FL_STORE(1) FL_STORE(2) FL_STORE(3) FL_STORE(4) FL_STORE(5)
#undef FL_STORE
}

}  // namespace

const F32Gemm& f32_gemm_avx2() { return f32_table<kMr, kNr, 288, kernel_6x16>(); }

}  // namespace fusedlens
#include "target_end.h"
