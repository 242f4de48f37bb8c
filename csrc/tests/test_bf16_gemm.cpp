// The bf16 tile GEMM against a double-precision sum over the same bf16 operands,
// on odd shapes (rows not a multiple of the 12-row block, columns not a multiple of
// the 32-column panel, odd k), with B packed from bf16 or float32 rows or from its
// transpose, overwriting C or adding to it; and the rounding against the definition.
#include <cmath>
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/bf16_gemm.h"
#include "isa_guard.h"

using namespace fusedlens;

enum class Pack { rows_bf16, rows_f32, transposed_bf16, transposed_f32 };

static void pack(Pack how, const std::vector<bf16>& b, int64_t n, int64_t k, uint32_t* packed) {
  std::vector<float> bf(n * k), kf(n * k);  // B as float32 (exact: bf16 values), and Bᵀ [k, n]
  std::vector<bf16> kb(n * k);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < k; ++i) {
      bf[j * k + i] = kf[i * n + j] = to_float(b[j * k + i]);
      kb[i * n + j] = b[j * k + i];
    }
  // transposed packs are built panel by panel, as a parallel caller would
  for (int64_t j0 = 0; j0 < n; j0 += kPackPanel) {
    const int64_t cols = std::min<int64_t>(kPackPanel, n - j0);
    uint32_t* dst = packed + j0 * ((k + 1) / 2);
    switch (how) {
      case Pack::rows_bf16: pack_b(b.data() + j0 * k, k, cols, k, dst); break;
      case Pack::rows_f32: pack_b(bf.data() + j0 * k, k, cols, k, dst); break;
      case Pack::transposed_bf16: pack_b_t(kb.data() + j0, n, k, cols, dst); break;
      case Pack::transposed_f32: pack_b_t(kf.data() + j0, n, k, cols, dst); break;
    }
  }
}

static int check(int64_t m, int64_t n, int64_t k, Pack how, bool accumulate, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> a(m * k);
  std::vector<bf16> b(n * k);
  for (auto& v : a) v = normal(rng);
  for (auto& v : b) v = to_bf16(normal(rng));
  const int64_t k_pad = k + (k & 1), ldc = (n + 31) / 32 * 32 + 3;
  std::vector<bf16> ar(m * k_pad);
  round_rows_bf16(a.data(), k, m, k, ar.data());
  std::vector<uint32_t> packed(packed_b_size(n, k));
  pack(how, b, n, k, packed.data());
  std::vector<float> c(m * ldc, std::nanf(""));
  if (accumulate)
    for (auto& v : c) v = normal(rng);
  const std::vector<float> c0 = c;
  gemm_bf16(ar.data(), k_pad, m, k, packed.data(), n, c.data(), ldc, accumulate);
  int bad = 0;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      double exact = accumulate ? c0[r * ldc + j] : 0, mag = std::fabs(exact);
      for (int64_t i = 0; i < k; ++i) {
        const double prod = double(to_float(ar[r * k_pad + i])) * to_float(b[j * k + i]);
        exact += prod;
        mag += std::fabs(prod);
      }
      // fp32 summation of k exact products: |error| <= k * 2^-24 * sum |products|.
      bad += !(std::fabs(c[r * ldc + j] - exact) <= (k + 1) * 0x1p-24 * mag + 1e-30);
    }
    for (int64_t j = n; j < (n + 31) / 32 * 32; ++j) bad += c[r * ldc + j] != (accumulate ? c0[r * ldc + j] : 0.f);
  }
  std::printf("m=%lld n=%lld k=%lld pack=%d accumulate=%d: %s\n", (long long)m, (long long)n, (long long)k,
              static_cast<int>(how), accumulate, bad ? "FAIL" : "ok");
  return bad;
}

int main() {
  if (skip_this_isa()) return 77;
  std::mt19937 rng(std::random_device{}());
  int bad = 0;
  for (int64_t m : {1, 12, 37})
    for (int64_t n : {1, 33, 100})
      for (int64_t k : {1, 7, 576, 1201})  // 1201: several k-blocks
        for (Pack how : {Pack::rows_bf16, Pack::rows_f32, Pack::transposed_bf16, Pack::transposed_f32})
          bad += check(m, n, k, how, how == Pack::rows_f32 || how == Pack::transposed_bf16, rng);
  // Rounding: nearest, ties to even, on values that sit exactly between two bf16s.
  bad += to_float(to_bf16(1.f + 0x1p-8f)) != 1.f;
  bad += to_float(to_bf16(1.f + 3 * 0x1p-8f)) != 1.f + 0x1p-6f;
  bad += to_float(to_bf16(-2.5f)) != -2.5f;
  bad += !std::isnan(to_float(to_bf16(std::nanf(""))));
  std::printf("bf16 dot instructions: %s\n", has_bf16_dot() ? "yes" : "no (portable loop)");
  return bad ? 1 : 0;
}
