// Pieces of the streaming ridge accumulation (docs/design.md, "Streaming ridge probes")
// that need no torch: packing one layer's rows into the shifted, augmented fp32
// matrix W = [x - shift_x | y - shift_y | 1], adding the upper triangle of an fp32
// Gram tile of W into float64 totals (the GEMM between them is done by the caller),
// and the m + 1 last columns of WᵀW summed in float64.
// The upper triangle of WᵀW holds XᵀX, Xᵀy, Σx (last column), yᵀy, Σy and n (corner).
#pragma once
#include <cstdint>

#include "gather_dot.h"  // bf16, to_float

namespace fusedlens {

// x: [rows, d] with row stride ldx (float or bf16); y: [rows, m] float32 with row stride
// ldy; shift_x [d], shift_y [m]. Writes out[r, :] (row stride ldo >= d + m + 1) as
// x[r] - shift_x, y[r] - shift_y, 1; each difference is one float32 rounding.
template <typename T>
void pack_augmented(const T* x, int64_t ldx, const float* shift_x, const float* y, int64_t ldy,
                    const float* shift_y, int64_t rows, int64_t d, int64_t m, float* out, int64_t ldo);

// Number of NaN/Inf entries of x [rows, d] (row stride ldx): the batch is checked
// before any of it reaches the totals, so a bad batch leaves them untouched.
template <typename T>
int64_t count_nonfinite(const T* x, int64_t ldx, int64_t rows, int64_t d);

// Adds tile[i, j] (a rows x cols fp32 block at row stride ldt, whose element (0, 0) is
// entry (r0, c0) of the full matrix) into out (float64, row stride ldo) where the
// full-matrix column is >= the row: the upper triangle, diagonal included.
void add_upper_tile(const float* tile, int64_t ldt, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                    double* out, int64_t ldo);

// Adds into out (float64, row stride ldo) the upper triangle of columns [c0, D) of WᵀW,
// W [rows, D] fp32 with row stride ldw, summed in float64: a product of two floats is
// exact in double, so Xᵀy, Σx, yᵀy, Σy and n carry no fp32 rounding (they set R²'s
// total and explained sums; only XᵀX goes through the fp32 GEMM). scratch: (D - c0) * D.
void add_upper_columns_f64(const float* w, int64_t ldw, int64_t rows, int64_t c0, int64_t D, double* out,
                           int64_t ldo, double* scratch);

}  // namespace fusedlens
