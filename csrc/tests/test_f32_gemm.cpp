// The float32 tile GEMM of the active ISA: bit for bit the single FMA chain over k that
// f32_gemm.h promises (so a logit does not depend on its rows or the ISA's tile), within
// the float64 sum's rounding bound, on odd shapes (rows not a multiple of the row block,
// columns not a multiple of the panel, k not a multiple of 8, several k-blocks), with
// zero pad rows and columns.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/f32_gemm.h"
#include "isa_guard.h"

using namespace fusedlens;

static int check(int64_t m, int64_t n, int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t lda = k + 3, ldb = k + 5;  // strided rows, as the sweeps pass them
  std::vector<float> a(m * lda), b(n * ldb);
  for (auto& v : a) v = normal(rng);
  for (auto& v : b) v = normal(rng);
  const int64_t m_pad = f32_rows_padded(m), n_pad = f32_cols_padded(n), ldc = n_pad + 7;
  std::vector<float> pa(m_pad * k), pb(n_pad * k), c(m_pad * ldc, std::nanf(""));
  f32_pack_a(a.data(), lda, m, k, pa.data());
  f32_pack_b(b.data(), ldb, n, k, pb.data());
  f32_gemm(pa.data(), m, k, pb.data(), n, c.data(), ldc);
  int bad = 0;
  const double u = std::ldexp(1.0, -24);
  for (int64_t r = 0; r < m_pad; ++r)
    for (int64_t j = 0; j < n_pad; ++j) {
      const float got = c[r * ldc + j];
      if (r >= m || j >= n) {
        if (got != 0.f && bad++ < 5) std::printf("pad (%ld, %ld) = %g, not 0\n", long(r), long(j), got);
        continue;
      }
      float chain = 0.f;
      double exact = 0, mag = 0;
      for (int64_t i = 0; i < k; ++i) {
        chain = std::fma(a[r * lda + i], b[j * ldb + i], chain);
        exact += double(a[r * lda + i]) * b[j * ldb + i];
        mag += std::fabs(double(a[r * lda + i]) * b[j * ldb + i]);
      }
      const bool same_chain = got == chain;
      const bool in_bound = std::fabs(got - exact) <= k * u * mag * 1.0001;
      if ((!same_chain || !in_bound) && bad++ < 5)
        std::printf("m=%ld n=%ld k=%ld (%ld, %ld): got %.9g, fma chain %.9g, exact %.9g\n", long(m), long(n), long(k),
                    long(r), long(j), got, chain, exact);
    }
  return bad;
}

int main() {
  if (skip_this_isa()) return 77;
  std::printf("register tile %d x %d\n", f32_gemm_kernel().mr, f32_gemm_kernel().nr);
  std::mt19937 rng(std::random_device{}());
  int bad = 0;
  const int64_t ms[] = {1, 5, 13, 25}, ns[] = {1, 7, 33, 100}, ks[] = {1, 7, 9, 64, 577, 1200};
  for (int64_t m : ms)
    for (int64_t n : ns)
      for (int64_t k : ks) bad += check(m, n, k, rng);
  std::printf("%s (%d bad)\n", bad ? "FAILED" : "ok", bad);
  return bad ? 1 : 0;
}
