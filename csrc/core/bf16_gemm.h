// bf16 x bf16 -> fp32 tile GEMM for the lens sweep with bfloat16 weights.
// C[m, n] = A[m, k] . B[n, k]^T, with A the normalised residual rows rounded to
// bf16 and B a tile of W_U rows. Every product of two bf16 values is exact in fp32,
// so the only differences from a float64 sum of the same bf16 operands are the
// fp32 additions. On CPUs with AVX512-BF16 the kernel uses vdpbf16ps, which does
// twice the multiply-adds per instruction of fp32 FMA.
#pragma once
#include <cstdint>

#include "gather_dot.h"

namespace fusedlens {

// Whether the bf16 sweeps use the CPU's bf16 dot-product instructions: the active ISA
// (csrc/core/isa.h) has them and either it was forced (FUSEDLENS_ISA=avx512bf16) or they
// were measured faster than fp32 FMA on this CPU. They are not everywhere: on an Intel Xeon
// with AVX512-BF16, vdpbf16ps ran at half the multiply-adds per second of vfmadd231ps.
// Without them the sweeps multiply the same bf16-rounded operands in fp32 (exact products).
bool has_bf16_dot();

// Multiply-adds per second of vdpbf16ps over vfmadd231ps (zmm), measured once in a
// register-only loop (about a millisecond); 0 when the CPU lacks AVX512-BF16.
double bf16_dot_speedup();
double bf16_dot_speedup_avx512bf16();  // the measurement (csrc/core/isa/bf16_avx512bf16.cpp)

// Rows of A as bf16 with an even row length: dst [m, k_pad] (k_pad = k rounded up to
// even; the pad column is zero).
void round_rows_bf16(const float* src, int64_t lds, int64_t m, int64_t k, bf16* dst);

// Number of uint32 words pack_b needs for an n x k tile.
int64_t packed_b_size(int64_t n, int64_t k);

// Packs B [n, k] (row stride ldb, bf16) into panels of 32 columns, each stored as
// [k/2][32] pairs (B[j, 2p], B[j, 2p + 1]): the operand layout of vdpbf16ps.
// Columns past n and the odd pad row of k are zero.
// The float32 overload rounds each value to bf16 on the way.
void pack_b(const bf16* b, int64_t ldb, int64_t n, int64_t k, uint32_t* packed);
void pack_b(const float* b, int64_t ldb, int64_t n, int64_t k, uint32_t* packed);

// The same packed layout built from B's transpose K = Bᵀ [k, n] (row stride ldk), so
// that gemm_bf16 computes A · K. Pairs run down K's columns.
void pack_b_t(const bf16* kmat, int64_t ldk, int64_t k, int64_t n, uint32_t* packed);
void pack_b_t(const float* kmat, int64_t ldk, int64_t k, int64_t n, uint32_t* packed);

// Panels are independent: columns [j0, j0 + cols) of B (j0 a multiple of this) are
// packed at packed + j0 * ((k + 1) / 2), so a tile can be packed in parallel.
constexpr int64_t kPackPanel = 32;

// C [m, n_pad] (row stride ldc >= n rounded up to 32) = A [m, k_pad] (row stride
// lda, from round_rows_bf16) times the packed B, or C += that with accumulate.
// Columns in [n, n_pad) get zeros (plus their old value with accumulate).
void gemm_bf16(const bf16* a, int64_t lda, int64_t m, int64_t k, const uint32_t* packed, int64_t n,
               float* c, int64_t ldc, bool accumulate = false);

// The AVX512-BF16 variant (csrc/core/isa/bf16_avx512bf16.cpp); only on CPUs that have it.
void gemm_bf16_avx512bf16(const bf16* a, int64_t lda, int64_t m, int64_t k, const uint32_t* packed, int64_t n,
                          float* c, int64_t ldc, bool accumulate);

}  // namespace fusedlens
