#include "bf16_gemm.h"

#include <cmath>
#include <cstring>

#if defined(__AVX512BF16__) && defined(__AVX512F__) && !defined(FUSEDLENS_PORTABLE)
#define FUSEDLENS_BF16_DOT 1
#include <immintrin.h>
#endif

namespace fusedlens {

namespace {
constexpr int64_t kPanel = kPackPanel;  // columns per packed panel: two zmm registers

inline uint32_t bits(bf16 v) { return v.bits; }
inline uint32_t bits(float v) { return to_bf16(v).bits; }

// Packs the n x k matrix B, given by get(j, i) = the bf16 bits of B[j, i], into panels of
// kPanel columns of (B[j, 2p], B[j, 2p + 1]) pairs; pad columns and the odd pad row are 0.
template <typename Get>
void pack_panels(int64_t n, int64_t k, uint32_t* packed, Get get) {
  const int64_t pairs = (k + 1) / 2;
  for (int64_t j0 = 0; j0 < n; j0 += kPanel) {
    uint32_t* panel = packed + j0 * pairs;
    const int64_t cols = n - j0 < kPanel ? n - j0 : kPanel;
    for (int64_t p = 0; p < pairs; ++p) {
      uint32_t* out = panel + p * kPanel;
      for (int64_t j = 0; j < cols; ++j)
        out[j] = get(j0 + j, 2 * p) | (2 * p + 1 < k ? get(j0 + j, 2 * p + 1) << 16 : 0u);
      for (int64_t j = cols; j < kPanel; ++j) out[j] = 0u;
    }
  }
}

template <typename T>
void pack_rows(const T* b, int64_t ldb, int64_t n, int64_t k, uint32_t* packed) {
  pack_panels(n, k, packed, [=](int64_t j, int64_t i) { return bits(b[j * ldb + i]); });
}

template <typename T>
void pack_cols(const T* kmat, int64_t ldk, int64_t k, int64_t n, uint32_t* packed) {
  pack_panels(n, k, packed, [=](int64_t j, int64_t i) { return bits(kmat[i * ldk + j]); });
}
}  // namespace

bool has_bf16_dot() {
#ifdef FUSEDLENS_BF16_DOT
  return true;
#else
  return false;
#endif
}

void round_rows_bf16(const float* src, int64_t lds, int64_t m, int64_t k, bf16* dst) {
  const int64_t k_pad = k + (k & 1);
  for (int64_t r = 0; r < m; ++r) {
    bf16* out = dst + r * k_pad;
    for (int64_t i = 0; i < k; ++i) out[i] = to_bf16(src[r * lds + i]);
    if (k_pad != k) out[k] = bf16{0};
  }
}

int64_t packed_b_size(int64_t n, int64_t k) {
  return (n + kPanel - 1) / kPanel * kPanel * ((k + 1) / 2);
}

void pack_b(const bf16* b, int64_t ldb, int64_t n, int64_t k, uint32_t* packed) { pack_rows(b, ldb, n, k, packed); }
void pack_b(const float* b, int64_t ldb, int64_t n, int64_t k, uint32_t* packed) { pack_rows(b, ldb, n, k, packed); }
void pack_b_t(const bf16* kmat, int64_t ldk, int64_t k, int64_t n, uint32_t* packed) {
  pack_cols(kmat, ldk, k, n, packed);
}
void pack_b_t(const float* kmat, int64_t ldk, int64_t k, int64_t n, uint32_t* packed) {
  pack_cols(kmat, ldk, k, n, packed);
}

#ifdef FUSEDLENS_BF16_DOT
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

void gemm_bf16(const bf16* a, int64_t lda, int64_t m, int64_t k, const uint32_t* packed, int64_t n, float* c,
               int64_t ldc, bool accumulate) {
  const int64_t pairs = (k + 1) / 2;
  for (int64_t r0 = 0; r0 < m; r0 += kRows) {
    const int64_t rows = m - r0 < kRows ? m - r0 : kRows;
    kTails[rows](a + r0 * lda, lda, packed, pairs, n, c + r0 * ldc, ldc, accumulate);
  }
}
#else
void gemm_bf16(const bf16* a, int64_t lda, int64_t m, int64_t k, const uint32_t* packed, int64_t n, float* c,
               int64_t ldc, bool accumulate) {
  const int64_t pairs = (k + 1) / 2, n_pad = (n + kPanel - 1) / kPanel * kPanel;
  auto lo = [](uint32_t v) { return to_float(bf16{static_cast<uint16_t>(v & 0xFFFFu)}); };
  auto hi = [](uint32_t v) { return to_float(bf16{static_cast<uint16_t>(v >> 16)}); };
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n_pad; ++j) {
      const uint32_t* col = packed + (j / kPanel) * kPanel * pairs + j % kPanel;
      float acc = 0.f;
      for (int64_t p = 0; p < pairs; ++p) {
        uint32_t av;
        std::memcpy(&av, a + r * lda + 2 * p, sizeof av);
        acc += lo(av) * lo(col[p * kPanel]) + hi(av) * hi(col[p * kPanel]);
      }
      c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc : acc;
    }
}
#endif

}  // namespace fusedlens
