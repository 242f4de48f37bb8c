// The bf16 tile GEMM with AVX512-BF16 (vdpbf16ps), whatever the build's -march;
// bf16_gemm.cpp calls it when the active ISA has bf16 dot instructions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))), apply_to = function)
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // false positives inside GCC 12's AVX-512 headers
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "../bf16_gemm.h"

namespace fusedlens {

constexpr int64_t kPanel = kPackPanel;

namespace {
// MR rows x 32 columns over all k pairs; 2*MR accumulators stay in registers.
template <int MR>
void micro_kernel(const bf16* a, int64_t lda, const uint32_t* panel, int64_t pairs, float* c, int64_t ldc,
                  bool accumulate) {
  __m512 acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) {
    acc0[r] = accumulate ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
    acc1[r] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(panel + p * kPanel);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(panel + p * kPanel + 16);
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, sizeof pair);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * ldc, acc0[r]);
    _mm512_storeu_ps(c + r * ldc + 16, acc1[r]);
  }
}

template <int MR>
void row_block(const bf16* a, int64_t lda, const uint32_t* packed, int64_t pairs, int64_t n, float* c,
               int64_t ldc, bool accumulate) {
  for (int64_t j0 = 0; j0 < n; j0 += kPanel)
    micro_kernel<MR>(a, lda, packed + j0 * pairs, pairs, c + j0, ldc, accumulate);
}

using RowBlockFn = void (*)(const bf16*, int64_t, const uint32_t*, int64_t, int64_t, float*, int64_t, bool);
constexpr int kRows = 12;  // 24 accumulators + 2 operands + 1 broadcast fit in 32 zmm
const RowBlockFn kTails[kRows + 1] = {nullptr,        row_block<1>, row_block<2>,  row_block<3>, row_block<4>,
                                      row_block<5>,   row_block<6>, row_block<7>,  row_block<8>, row_block<9>,
                                      row_block<10>,  row_block<11>, row_block<12>};
}  // namespace

void gemm_bf16_avx512bf16(const bf16* a, int64_t lda, int64_t m, int64_t k, const uint32_t* packed, int64_t n,
                          float* c, int64_t ldc, bool accumulate) {
  const int64_t pairs = (k + 1) / 2;
  for (int64_t r0 = 0; r0 < m; r0 += kRows) {
    const int64_t rows = m - r0 < kRows ? m - r0 : kRows;
    kTails[rows](a + r0 * lda, lda, packed, pairs, n, c + r0 * ldc, ldc, accumulate);
  }
}

}  // namespace fusedlens
#if defined(__clang__)
#pragma clang attribute pop
#endif
