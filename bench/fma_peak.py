"""The machine's measured fp32 FMA peak, per vector width (AVX-512, AVX2).

A register-only loop of twelve independent chains of fused multiply-adds (distinct starting
values: identical chains are merged by the compiler, which made an earlier version of this
script report 3.5x the real peak), on every core, gives the peak in GFLOP/s.
`bench/lens_stats.py --per-isa` expresses its figures as a share of it.

python bench/fma_peak.py   -> bench/results/fma_peak.json
"""
import time

import torch
from torch.utils.cpp_extension import load_inline

from common import arg_parser, isa, write_result

SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <cstdint>

#define FMA12(F) a0 = F(a0, x, y); a1 = F(a1, x, y); a2 = F(a2, x, y); a3 = F(a3, x, y); a4 = F(a4, x, y); \
  a5 = F(a5, x, y); a6 = F(a6, x, y); a7 = F(a7, x, y); a8 = F(a8, x, y); a9 = F(a9, x, y); a10 = F(a10, x, y); \
  a11 = F(a11, x, y);
__attribute__((target("avx512f"))) static double run512(int64_t iters) {
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  // distinct starting values: twelve identical chains would be folded into one by the compiler
  __m512 a0 = _mm512_set1_ps(1.f), a1 = _mm512_set1_ps(2.f), a2 = _mm512_set1_ps(3.f), a3 = _mm512_set1_ps(4.f),
         a4 = _mm512_set1_ps(5.f), a5 = _mm512_set1_ps(6.f), a6 = _mm512_set1_ps(7.f), a7 = _mm512_set1_ps(8.f),
         a8 = _mm512_set1_ps(9.f), a9 = _mm512_set1_ps(10.f), a10 = _mm512_set1_ps(11.f), a11 = _mm512_set1_ps(12.f);
  for (int64_t n = 0; n < iters; ++n) { FMA12(_mm512_fmadd_ps) }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
             _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)),
                           _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11))));
  return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx2,fma"))) static double run256(int64_t iters) {
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(1.f), a1 = _mm256_set1_ps(2.f), a2 = _mm256_set1_ps(3.f), a3 = _mm256_set1_ps(4.f),
         a4 = _mm256_set1_ps(5.f), a5 = _mm256_set1_ps(6.f), a6 = _mm256_set1_ps(7.f), a7 = _mm256_set1_ps(8.f),
         a8 = _mm256_set1_ps(9.f), a9 = _mm256_set1_ps(10.f), a10 = _mm256_set1_ps(11.f), a11 = _mm256_set1_ps(12.f);
  for (int64_t n = 0; n < iters; ++n) { FMA12(_mm256_fmadd_ps) }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                           _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
  float out[8], t = 0;
  _mm256_storeu_ps(out, s);
  for (float v : out) t += v;
  return t;
}
// flops of `iters` rounds on every thread (2 per FMA lane); the checksum keeps the loop alive
std::vector<double> fma_flops(int64_t iters, bool avx512) {
  double check = 0; int threads = 1;
  #pragma omp parallel reduction(+ : check)
  {
    #pragma omp single
    threads = omp_get_num_threads();
    check += avx512 ? run512(iters) : run256(iters);
  }
  return {double(threads) * iters * 12 * (avx512 ? 16 : 8) * 2, check};
}
"""


def main():
    ap = arg_parser(__doc__, "fma_peak.json", threads=None)
    ap.add_argument("--iters", type=int, default=200_000_000)
    args = ap.parse_args()
    mod = load_inline("fma_peak", cpp_sources=SOURCE, functions=["fma_flops"], extra_cflags=["-O2", "-fopenmp"],
                      extra_ldflags=["-fopenmp"], verbose=False)
    level = isa()
    rows = {}
    for name, wide in (("avx512", True), ("avx2", False)):
        if wide and not level.startswith("AVX512") and level != "AVX-512":
            continue
        mod.fma_flops(args.iters // 100, wide)  # warm up (clocks settle)
        t0 = time.perf_counter()
        flops, _ = mod.fma_flops(args.iters, wide)
        rows[name] = flops / (time.perf_counter() - t0) / 1e9
        print(f"{name}: measured FMA peak {rows[name]:.1f} GFLOP/s on {torch.get_num_threads()} threads", flush=True)
    write_result({"gflops_peak": rows}, args.out)


if __name__ == "__main__":
    main()
