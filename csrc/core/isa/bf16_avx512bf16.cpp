// The bf16 tile GEMM with AVX512-BF16 (vdpbf16ps), whatever the build's -march;
// bf16_gemm.cpp calls it when the active ISA has bf16 dot instructions.
#define FUSEDLENS_TARGET_BF16
#include "target_avx512.h"

#include <algorithm>
#include <chrono>
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

using KernelFn = void (*)(const bf16*, int64_t, const uint32_t*, int64_t, float*, int64_t, bool);
constexpr int kRows = 12;  // 24 accumulators + 2 operands + 1 broadcast fit in 32 zmm
const KernelFn kKernels[kRows + 1] = {nullptr,           micro_kernel<1>,  micro_kernel<2>, micro_kernel<3>,
                                      micro_kernel<4>,   micro_kernel<5>,  micro_kernel<6>, micro_kernel<7>,
                                      micro_kernel<8>,   micro_kernel<9>,  micro_kernel<10>, micro_kernel<11>,
                                      micro_kernel<12>};
constexpr int64_t kPairBlock = 288;  // a panel's k-block: 288 pairs x 32 columns = 36 KiB, L1-resident
}  // namespace

// For each k-block and panel, every row block in turn: the panel's k-block stays in L1 while
// the rows stream past it; later k-blocks add to C.
void gemm_bf16_avx512bf16(const bf16* a, int64_t lda, int64_t m, int64_t k, const uint32_t* packed, int64_t n,
                          float* c, int64_t ldc, bool accumulate) {
  const int64_t pairs = (k + 1) / 2;
  for (int64_t p0 = 0; p0 < pairs; p0 += kPairBlock) {
    const int64_t block = pairs - p0 < kPairBlock ? pairs - p0 : kPairBlock;
    for (int64_t j0 = 0; j0 < n; j0 += kPanel)
      for (int64_t r0 = 0; r0 < m; r0 += kRows) {
        const int64_t rows = m - r0 < kRows ? m - r0 : kRows;
        kKernels[rows](a + r0 * lda + 2 * p0, lda, packed + j0 * pairs + p0 * kPanel, block, c + r0 * ldc + j0, ldc,
                       accumulate || p0 > 0);
      }
  }
}

namespace {
// Twelve independent chains of one instruction in named registers (an array would live in
// memory) with distinct starts, so none are merged; the checksum keeps the loop.
template <typename Step>
double chains_per_second(Step step, int64_t iters, float* checksum) {
  __m512 a0 = _mm512_set1_ps(1.f), a1 = _mm512_set1_ps(2.f), a2 = _mm512_set1_ps(3.f), a3 = _mm512_set1_ps(4.f),
         a4 = _mm512_set1_ps(5.f), a5 = _mm512_set1_ps(6.f), a6 = _mm512_set1_ps(7.f), a7 = _mm512_set1_ps(8.f),
         a8 = _mm512_set1_ps(9.f), a9 = _mm512_set1_ps(10.f), a10 = _mm512_set1_ps(11.f), a11 = _mm512_set1_ps(12.f);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t n = 0; n < iters; ++n) {
    a0 = step(a0), a1 = step(a1), a2 = step(a2), a3 = step(a3), a4 = step(a4), a5 = step(a5);
    a6 = step(a6), a7 = step(a7), a8 = step(a8), a9 = step(a9), a10 = step(a10), a11 = step(a11);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                                 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
                                   _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  *checksum += _mm512_reduce_add_ps(sum);
  return 12.0 * iters / s;
}
}  // namespace

double bf16_dot_speedup_avx512bf16() {
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3F7F3F7F), y = (__m512bh)_mm512_set1_epi32(0x3A803A80);
  const __m512 xf = _mm512_set1_ps(0.999f), yf = _mm512_set1_ps(1e-3f);
  float checksum = 0.f;
  auto dot = [&](__m512 acc) { return _mm512_dpbf16_ps(acc, x, y); };    // 32 multiply-adds
  auto fma = [&](__m512 acc) { return _mm512_fmadd_ps(acc, xf, yf); };  // 16 multiply-adds
  chains_per_second(dot, 20000, &checksum);  // warm up
  double best = 0;
  for (int rep = 0; rep < 3; ++rep)
    best = std::max(best, 32 * chains_per_second(dot, 100000, &checksum) / (16 * chains_per_second(fma, 100000, &checksum)));
  return checksum == 12345.f ? best + 1e-9 : best;
}

}  // namespace fusedlens
#include "target_end.h"
