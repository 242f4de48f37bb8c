#include "bf16_gemm.h"

#include <cmath>
#include <cstring>

#include "isa.h"

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

double bf16_dot_speedup() {
  static const double speedup = cpu_isa() == Isa::avx512bf16 ? bf16_dot_speedup_avx512bf16() : 0.0;
  return speedup;
}

bool has_bf16_dot() {
  return active_isa() == Isa::avx512bf16 && (isa_forced() || bf16_dot_speedup() > 1.25);
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

void gemm_bf16(const bf16* a, int64_t lda, int64_t m, int64_t k, const uint32_t* packed, int64_t n, float* c,
               int64_t ldc, bool accumulate) {
  if (active_isa() == Isa::avx512bf16) return gemm_bf16_avx512bf16(a, lda, m, k, packed, n, c, ldc, accumulate);
  // Without bf16 dot instructions (the callers send such work through the fp32 sweeps;
  // this loop keeps the function total, and is what the tests compare against).
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

}  // namespace fusedlens
