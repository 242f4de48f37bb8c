// ridge_pack against double-precision loops, run by ctest: the packed rows are the
// shifted inputs, and tiles added with add_upper_tile plus add_upper_columns_f64
// rebuild exactly the upper triangle of WᵀW (lower triangle untouched) for block sizes
// that do not divide d.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/ridge_pack.h"
#include "isa_guard.h"

using fusedlens::bf16;
using fusedlens::to_bf16;

template <typename T>
static int check(int64_t rows, int64_t d, int64_t m, int64_t block, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t D = d + m + 1, ldx = d + 3;  // padded rows: the row stride is honoured
  std::vector<T> x(rows * ldx);
  std::vector<float> y(rows * m), sx(d), sy(m);
  for (auto& v : x) { if constexpr (sizeof(T) == 2) v = to_bf16(5.f + normal(rng)); else v = 5.f + normal(rng); }
  for (int64_t r = 0; r < rows; ++r)  // NaN in the padding: it must never be read
    for (int64_t j = d; j < ldx; ++j) { if constexpr (sizeof(T) == 2) x[r * ldx + j] = to_bf16(NAN); else x[r * ldx + j] = NAN; }
  for (auto& v : y) v = -3.f + 2.f * normal(rng);
  for (auto& v : sx) v = 5.f + 0.1f * normal(rng);
  for (auto& v : sy) v = -3.f + 0.1f * normal(rng);
  std::vector<float> w(rows * D, NAN);
  fusedlens::pack_augmented<T>(x.data(), ldx, sx.data(), y.data(), m, sy.data(), rows, d, m, w.data(), D);
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) bad += w[r * D + j] != fusedlens::to_float(x[r * ldx + j]) - sx[j];
    for (int64_t j = 0; j < m; ++j) bad += w[r * D + d + j] != y[r * m + j] - sy[j];
    bad += w[r * D + d + m] != 1.f;
  }
  // Upper triangle as the torch driver builds it: XᵀX from fp32 tiles (i0 <= j0), the m + 1
  // last columns in float64.
  std::vector<double> out(D * D, 0.0), scratch((m + 1) * D);
  std::vector<float> tile(block * block);
  for (int64_t i0 = 0; i0 < d; i0 += block)
    for (int64_t j0 = i0; j0 < d; j0 += block) {
      const int64_t bi = std::min(block, d - i0), bj = std::min(block, d - j0);
      for (int64_t i = 0; i < bi; ++i)
        for (int64_t j = 0; j < bj; ++j) {
          float acc = 0.f;
          for (int64_t r = 0; r < rows; ++r) acc += w[r * D + i0 + i] * w[r * D + j0 + j];
          tile[i * bj + j] = acc;
        }
      fusedlens::add_upper_tile(tile.data(), bj, bi, bj, i0, j0, out.data(), D);
    }
  fusedlens::add_upper_columns_f64(w.data(), D, rows, d, D, out.data(), D, scratch.data());
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < D; ++j) {
      if (j < i) { bad += out[i * D + j] != 0.0; continue; }
      double want = 0.0, scale = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        want += double(w[r * D + i]) * w[r * D + j];
        scale += std::fabs(double(w[r * D + i]) * w[r * D + j]);
      }
      const double tol = j < d ? 1e-5 : 1e-13;  // fp32 tiles; float64 sums of exact products
      bad += !(std::fabs(out[i * D + j] - want) <= tol * scale + 1e-30);  // a NaN fails
    }
  // NaN/Inf counting: finite data gives 0, then plant a few bad values (never in the padding)
  bad += fusedlens::count_nonfinite<T>(x.data(), ldx, rows, d) != 0;
  const float specials[3] = {NAN, INFINITY, -INFINITY};
  int64_t planted = 0;
  for (int64_t k = 0; k < 3 && k < rows * d; ++k) {
    const int64_t at = (k * 7919) % (rows * d);
    T& v = x[(at / d) * ldx + at % d];
    if (!std::isfinite(fusedlens::to_float(v))) continue;
    if constexpr (sizeof(T) == 2) v = to_bf16(specials[k]); else v = specials[k];
    ++planted;
  }
  bad += fusedlens::count_nonfinite<T>(x.data(), ldx, rows, d) != planted;
  std::printf("rows=%lld d=%lld m=%lld block=%lld x=%s: %s\n", (long long)rows, (long long)d, (long long)m,
              (long long)block, sizeof(T) == 2 ? "bf16" : "f32", bad ? "FAIL" : "ok");
  return bad;
}

int main() {
  if (skip_this_isa()) return 77;
  std::mt19937 rng(std::random_device{}());
  int bad = 0;
  for (int64_t rows : {1, 9, 130})
    for (int64_t d : {1, 13, 70})
      for (int64_t m : {1, 3})
        for (int64_t block : {4, 16, 128}) {
          bad += check<float>(rows, d, m, block, rng);
          bad += check<bf16>(rows, d, m, block, rng);
        }
  return bad ? 1 : 0;
}
