#include "ridge_pack.h"

namespace fusedlens {

template <typename T>
void pack_augmented(const T* x, int64_t ldx, const float* shift_x, const float* y, int64_t ldy,
                    const float* shift_y, int64_t rows, int64_t d, int64_t m, float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * ldx;
    float* o = out + r * ldo;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) o[j] = to_float(xr[j]) - shift_x[j];
    for (int64_t j = 0; j < m; ++j) o[d + j] = y[r * ldy + j] - shift_y[j];
    o[d + m] = 1.f;
  }
}

template <typename T>
int64_t count_nonfinite(const T* x, int64_t ldx, int64_t rows, int64_t d) {
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * ldx;
#pragma omp simd reduction(+ : bad)
    for (int64_t j = 0; j < d; ++j) {
      const float v = to_float(xr[j]);
      bad += (v - v) != 0.f;  // NaN for NaN and ±Inf, 0 otherwise; vectorises where isfinite does not
    }
  }
  return bad;
}

void add_upper_tile(const float* tile, int64_t ldt, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                    double* out, int64_t ldo) {
  for (int64_t i = 0; i < rows; ++i) {
    // first tile column on or right of the diagonal for full-matrix row r0 + i
    int64_t j0 = r0 + i - c0;
    if (j0 < 0) j0 = 0;
    const float* t = tile + i * ldt;
    double* o = out + (r0 + i) * ldo + c0;
#pragma omp simd
    for (int64_t j = j0; j < cols; ++j) o[j] += static_cast<double>(t[j]);
  }
}

void add_upper_columns_f64(const float* w, int64_t ldw, int64_t rows, int64_t c0, int64_t D, double* out,
                           int64_t ldo, double* scratch) {
  const int64_t k = D - c0;
  for (int64_t i = 0; i < k * D; ++i) scratch[i] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * ldw;
    for (int64_t j = 0; j < k; ++j) {
      const double a = wr[c0 + j];
      double* acc = scratch + j * D;
      const int64_t n = c0 + j + 1;  // rows 0..c0+j of column c0+j: the upper triangle
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(wr[i]) * a;
    }
  }
  for (int64_t j = 0; j < k; ++j)
    for (int64_t i = 0; i <= c0 + j; ++i) out[i * ldo + c0 + j] += scratch[j * D + i];
}

template void pack_augmented<float>(const float*, int64_t, const float*, const float*, int64_t, const float*,
                                    int64_t, int64_t, int64_t, float*, int64_t);
template void pack_augmented<bf16>(const bf16*, int64_t, const float*, const float*, int64_t, const float*,
                                   int64_t, int64_t, int64_t, float*, int64_t);
template int64_t count_nonfinite<float>(const float*, int64_t, int64_t, int64_t);
template int64_t count_nonfinite<bf16>(const bf16*, int64_t, int64_t, int64_t);

}  // namespace fusedlens
