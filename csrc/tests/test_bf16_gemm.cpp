// The bf16 tile GEMM against a double-precision sum over the same bf16 operands,
// on odd shapes (rows not a multiple of the 12-row block, columns not a multiple of
// the 32-column panel, odd k), and its rounding against the definition.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/bf16_gemm.h"

using namespace fusedlens;

static int check(int64_t m, int64_t n, int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> a(m * k);
  std::vector<bf16> b(n * k);
  for (auto& v : a) v = normal(rng);
  for (auto& v : b) v = to_bf16(normal(rng));
  const int64_t k_pad = k + (k & 1), ldc = (n + 31) / 32 * 32 + 3;
  std::vector<bf16> ar(m * k_pad);
  round_rows_bf16(a.data(), k, m, k, ar.data());
  std::vector<uint32_t> packed(packed_b_size(n, k));
  pack_b(b.data(), k, n, k, packed.data());
  std::vector<float> c(m * ldc, std::nanf(""));
  gemm_bf16(ar.data(), k_pad, m, k, packed.data(), n, c.data(), ldc);
  int bad = 0;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      double exact = 0, mag = 0;
      for (int64_t i = 0; i < k; ++i) {
        const double prod = double(to_float(ar[r * k_pad + i])) * to_float(b[j * k + i]);
        exact += prod;
        mag += std::fabs(prod);
      }
      // fp32 summation of k exact products: |error| <= k * 2^-24 * sum |products|.
      bad += !(std::fabs(c[r * ldc + j] - exact) <= (k + 1) * 0x1p-24 * mag + 1e-30);
    }
    for (int64_t j = n; j < (n + 31) / 32 * 32; ++j) bad += c[r * ldc + j] != 0.f;
  }
  std::printf("m=%lld n=%lld k=%lld: %s\n", (long long)m, (long long)n, (long long)k, bad ? "FAIL" : "ok");
  return bad;
}

int main() {
  std::mt19937 rng(std::random_device{}());
  int bad = 0;
  for (int64_t m : {1, 12, 37})
    for (int64_t n : {1, 33, 100})
      for (int64_t k : {1, 7, 576}) bad += check(m, n, k, rng);
  // Rounding: nearest, ties to even, on values that sit exactly between two bf16s.
  bad += to_float(to_bf16(1.f + 0x1p-8f)) != 1.f;
  bad += to_float(to_bf16(1.f + 3 * 0x1p-8f)) != 1.f + 0x1p-6f;
  bad += to_float(to_bf16(-2.5f)) != -2.5f;
  bad += !std::isnan(to_float(to_bf16(std::nanf(""))));
  std::printf("bf16 dot instructions: %s\n", has_bf16_dot() ? "yes" : "no (portable loop)");
  return bad ? 1 : 0;
}
