// float32 tile GEMM of our own for the lens sweeps: C = A · Bᵀ with A the normalised
// residual rows and B a tile of W_U rows, both packed once and reused. It beats calling
// the BLAS per token group because the B tile is packed once for all the groups of a
// sweep (a BLAS call re-packs it every time: 12 % of the sweep's time under MKL) and the
// register tile is chosen per ISA (bench/results/lens_stats_per_isa.json).
//
// Summation order: each C[r, j] is one FMA chain over k in increasing order (k-blocks
// continue the same chain), so a logit does not depend on which rows it was computed
// with, nor on the ISA's tile shape.
#pragma once
#include <cstdint>

namespace fusedlens {

// The active ISA's kernel (csrc/core/isa.h): mr x nr register tile. `fast` is false on
// the generic level, where callers use the BLAS instead (this file's loops stay correct).
struct F32Gemm {
  int mr, nr;
  bool fast;
  void (*pack_b)(const float* b, int64_t ldb, int64_t n, int64_t k, float* packed);
  void (*gemm)(const float* pa, int64_t m, int64_t k, const float* pb, int64_t n, float* c, int64_t ldc);
};
const F32Gemm& f32_gemm_kernel();
const F32Gemm& f32_gemm_generic();
const F32Gemm& f32_gemm_avx2();
const F32Gemm& f32_gemm_avx512();

// Rows of A rounded up to whole mr-row blocks, and columns of B to whole nr panels.
int64_t f32_rows_padded(int64_t m);
int64_t f32_cols_padded(int64_t n);

// A [m, k] (row stride lda) as blocks of mr rows, each [k][mr]; pad rows are zero.
// Needs f32_rows_padded(m) * k floats.
void f32_pack_a(const float* a, int64_t lda, int64_t m, int64_t k, float* packed);

// B [n, k] (row stride ldb) as panels of nr columns of C, each [k][nr]; pad columns are
// zero. Needs f32_cols_padded(n) * k floats.
void f32_pack_b(const float* b, int64_t ldb, int64_t n, int64_t k, float* packed);

// C [f32_rows_padded(m), f32_cols_padded(n)] (row stride ldc) = A · Bᵀ from the packed
// operands; pad rows and columns come out zero.
void f32_gemm(const float* pa, int64_t m, int64_t k, const float* pb, int64_t n, float* c, int64_t ldc);

// The k-block length of the kernels: k split evenly into blocks of at most kc_max, so that a
// B panel's block stays in L1 (AVX2: 288 x 16 floats, 18 KiB, under Zen 3's 32 KiB) or L2.
inline int64_t f32_k_block(int64_t k, int64_t kc_max) {
  const int64_t blocks = (k + kc_max - 1) / kc_max;
  return (k + blocks - 1) / blocks;
}

}  // namespace fusedlens
