#include "f32_gemm.h"

#include <algorithm>
#include <cmath>

#include "isa.h"

namespace fusedlens {

const F32Gemm& f32_gemm_kernel() {
  switch (active_isa()) {
    case Isa::avx512bf16:
    case Isa::avx512: return f32_gemm_avx512();
    case Isa::avx2: return f32_gemm_avx2();
    default: return f32_gemm_generic();
  }
}

int64_t f32_rows_padded(int64_t m) {
  const int64_t mr = f32_gemm_kernel().mr;
  return (m + mr - 1) / mr * mr;
}

int64_t f32_cols_padded(int64_t n) {
  const int64_t nr = f32_gemm_kernel().nr;
  return (n + nr - 1) / nr * nr;
}

void f32_pack_a(const float* a, int64_t lda, int64_t m, int64_t k, float* packed) {
  const int mr = f32_gemm_kernel().mr;
  for (int64_t r0 = 0; r0 < m; r0 += mr) {
    float* block = packed + r0 * k;
    for (int64_t i = 0; i < k; ++i)
      for (int r = 0; r < mr; ++r) block[i * mr + r] = r0 + r < m ? a[(r0 + r) * lda + i] : 0.f;
  }
}

void f32_pack_b(const float* b, int64_t ldb, int64_t n, int64_t k, float* packed) {
  f32_gemm_kernel().pack_b(b, ldb, n, k, packed);
}

void f32_gemm(const float* pa, int64_t m, int64_t k, const float* pb, int64_t n, float* c, int64_t ldc) {
  f32_gemm_kernel().gemm(pa, m, k, pb, n, c, ldc);
}

namespace {
constexpr int kGenericMr = 4, kGenericNr = 16;

void pack_b_generic(const float* b, int64_t ldb, int64_t n, int64_t k, float* packed) {
  for (int64_t j0 = 0; j0 < n; j0 += kGenericNr) {
    float* panel = packed + j0 * k;
    for (int64_t i = 0; i < k; ++i)
      for (int j = 0; j < kGenericNr; ++j) panel[i * kGenericNr + j] = j0 + j < n ? b[(j0 + j) * ldb + i] : 0.f;
  }
}

// The same k order as the vector kernels: one chain per element, k ascending.
void gemm_generic(const float* pa, int64_t m, int64_t k, const float* pb, int64_t n, float* c, int64_t ldc) {
  const int64_t m_pad = (m + kGenericMr - 1) / kGenericMr * kGenericMr;
  const int64_t n_pad = (n + kGenericNr - 1) / kGenericNr * kGenericNr;
  for (int64_t r = 0; r < m_pad; ++r)
    for (int64_t j = 0; j < n_pad; ++j) {
      const float* a = pa + (r / kGenericMr) * kGenericMr * k + r % kGenericMr;
      const float* bp = pb + (j / kGenericNr) * kGenericNr * k + j % kGenericNr;
      float acc = 0.f;
      for (int64_t i = 0; i < k; ++i) acc = std::fma(a[i * kGenericMr], bp[i * kGenericNr], acc);
      c[r * ldc + j] = acc;
    }
}
}  // namespace

const F32Gemm& f32_gemm_generic() {
  static const F32Gemm table{kGenericMr, kGenericNr, false, pack_b_generic, gemm_generic};
  return table;
}

}  // namespace fusedlens
