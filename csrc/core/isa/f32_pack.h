// Packing W_U tiles for the float32 tile GEMM (csrc/core/f32_gemm.h) with 8 x 8 AVX
// transposes: included by the avx2 and avx512 translation units only, each compiling its
// own copy (internal linkage) under its target pragma.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "../f32_gemm.h"

namespace fusedlens {
namespace {

// out[i * ldo + j] = in[j * ldi + i] for an 8 x 8 block.
inline void transpose8(const float* in, int64_t ldi, float* out, int64_t ldo) {
  __m256 r0 = _mm256_loadu_ps(in), r1 = _mm256_loadu_ps(in + ldi), r2 = _mm256_loadu_ps(in + 2 * ldi),
         r3 = _mm256_loadu_ps(in + 3 * ldi), r4 = _mm256_loadu_ps(in + 4 * ldi), r5 = _mm256_loadu_ps(in + 5 * ldi),
         r6 = _mm256_loadu_ps(in + 6 * ldi), r7 = _mm256_loadu_ps(in + 7 * ldi);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
               t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(out, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_storeu_ps(out + ldo, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_storeu_ps(out + 2 * ldo, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_storeu_ps(out + 3 * ldo, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_storeu_ps(out + 4 * ldo, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_storeu_ps(out + 5 * ldo, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_storeu_ps(out + 6 * ldo, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_storeu_ps(out + 7 * ldo, _mm256_permute2f128_ps(s3, s7, 0x31));
}

// B [n, k] rows into panels of NR columns, each [k][NR]; pad columns are zero. Full
// 8 x 8 blocks are transposed in registers, the edges copied one value at a time.
template <int NR>
void pack_b_panels(const float* b, int64_t ldb, int64_t n, int64_t k, float* packed) {
  const int64_t k8 = k / 8 * 8;
  for (int64_t j0 = 0; j0 < n; j0 += NR) {
    float* panel = packed + j0 * k;
    for (int jg = 0; jg < NR; jg += 8) {
      const int64_t j = j0 + jg;
      if (j + 8 <= n) {
        for (int64_t i = 0; i < k8; i += 8) transpose8(b + j * ldb + i, ldb, panel + i * NR + jg, NR);
        for (int64_t i = k8; i < k; ++i)
          for (int c = 0; c < 8; ++c) panel[i * NR + jg + c] = b[(j + c) * ldb + i];
      } else {
        for (int64_t i = 0; i < k; ++i)
          for (int c = 0; c < 8; ++c) panel[i * NR + jg + c] = j + c < n ? b[(j + c) * ldb + i] : 0.f;
      }
    }
  }
}

// C = A · Bᵀ over k-blocks (csrc/core/f32_gemm.h): the B panel's k-block is reused by
// every row block while it sits in L1/L2; later k-blocks add to C.
template <int MR, int NR, typename Kernel>
void gemm_blocked(Kernel kernel, const float* pa, int64_t m, int64_t k, const float* pb, int64_t n, float* c,
                  int64_t ldc, int64_t kc_max) {
  for (int64_t k0 = 0; k0 < k; k0 += kc_max) {
    const int64_t kc = k - k0 < kc_max ? k - k0 : kc_max;
    for (int64_t j0 = 0; j0 < n; j0 += NR)
      for (int64_t r0 = 0; r0 < m; r0 += MR)
        kernel(pa + r0 * k + k0 * MR, pb + j0 * k + k0 * NR, kc, c + r0 * ldc + j0, ldc, k0 > 0);
  }
}

using F32Kernel = void (*)(const float* pa, const float* pb, int64_t kc, float* c, int64_t ldc, bool accumulate);

// An ISA's kernel table from its register-tile kernel.
template <int MR, int NR, int KC, F32Kernel Kernel>
void gemm_with(const float* pa, int64_t m, int64_t k, const float* pb, int64_t n, float* c, int64_t ldc) {
  gemm_blocked<MR, NR>(Kernel, pa, m, k, pb, n, c, ldc, f32_k_block(k, KC));
}

// KC: the longest k-block (measured on the Xeon: 576 and 288 within noise for AVX2, 576
// best for AVX-512).
template <int MR, int NR, int KC, F32Kernel Kernel>
const F32Gemm& f32_table() {
  static const F32Gemm table{MR, NR, true, pack_b_panels<NR>, gemm_with<MR, NR, KC, Kernel>};
  return table;
}

}  // namespace
}  // namespace fusedlens
