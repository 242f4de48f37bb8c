"""The machine's measured peak, per vector width: fp32 FMA (AVX-512, AVX2) and the bf16 dot product
(AVX512-BF16's vdpbf16ps: 2 multiply-adds per fp32 lane), on one thread and on every thread.

A register-only loop of twelve independent chains (distinct starting values: identical chains are
merged by the compiler, which made an earlier version of this script report 3.5x the real peak) on
exactly the threads asked for (OpenMP's count set explicitly: its default need not be torch's). The
one-thread figure tells two cores from two hyperthreads of one core: on two real cores the total is
about twice it. Any op's share of the peak is computed against a peak measured in the same run
(`measure()`, as bench/lens_stats.py does); a share above 100 % means a broken peak, not a fast op.

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
__attribute__((target("avx512f,avx512bf16"))) static double runbf16(int64_t iters) {
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);  // 1.0, ~6e-8
  __m512 a0 = _mm512_set1_ps(1.f), a1 = _mm512_set1_ps(2.f), a2 = _mm512_set1_ps(3.f), a3 = _mm512_set1_ps(4.f),
         a4 = _mm512_set1_ps(5.f), a5 = _mm512_set1_ps(6.f), a6 = _mm512_set1_ps(7.f), a7 = _mm512_set1_ps(8.f),
         a8 = _mm512_set1_ps(9.f), a9 = _mm512_set1_ps(10.f), a10 = _mm512_set1_ps(11.f), a11 = _mm512_set1_ps(12.f);
  for (int64_t n = 0; n < iters; ++n) { FMA12(_mm512_dpbf16_ps) }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
             _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)),
                           _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11))));
  return _mm512_reduce_add_ps(s);
}
// flops of `iters` rounds on `threads` threads; the checksum keeps the loop alive.
// kind 0: AVX2 FMA (8 lanes x 2), 1: AVX-512 FMA (16 x 2), 2: vdpbf16ps (16 lanes x 2 pairs x 2)
std::vector<double> fma_flops(int64_t iters, int64_t kind, int64_t threads) {
  double check = 0; int used = 1;
  omp_set_num_threads(int(threads));
  #pragma omp parallel reduction(+ : check)
  {
    #pragma omp single
    used = omp_get_num_threads();
    check += kind == 2 ? runbf16(iters) : kind == 1 ? run512(iters) : run256(iters);
  }
  return {double(used) * iters * 12 * (kind == 0 ? 16 : kind == 1 ? 32 : 64), check, double(used)};
}
"""


_MODULE = None
KINDS = (("avx2", 0), ("avx512", 1), ("bf16_dot", 2))


def _module():
    global _MODULE
    if _MODULE is None:
        _MODULE = load_inline("fma_peak_v2", cpp_sources=SOURCE, functions=["fma_flops"],
                              extra_cflags=["-O2", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    return _MODULE


def measure(threads: int | None = None, iters: int = 400_000_000) -> dict:
    """GFLOP/s per kind this CPU has, on `threads` threads (default torch's) and on one thread."""
    from fusedlens.core.cpu import supported_isas

    threads = threads or torch.get_num_threads()
    have = set(supported_isas())
    mod = _module()
    out = {"threads": threads, "gflops_peak": {}, "gflops_peak_one_thread": {}}
    for name, kind in KINDS:
        if (kind == 1 and "avx512" not in have) or (kind == 2 and "avx512bf16" not in have) or "avx2" not in have:
            continue
        for n, key in ((threads, "gflops_peak"), (1, "gflops_peak_one_thread")):
            mod.fma_flops(iters // 100, kind, n)  # warm up (clocks settle)
            t0 = time.perf_counter()
            flops, _, used = mod.fma_flops(iters, kind, n)
            assert int(used) == n, f"OpenMP ran {used} threads, not {n}"
            out[key][name] = flops / (time.perf_counter() - t0) / 1e9
    one, many = out["gflops_peak_one_thread"].get("avx2"), out["gflops_peak"].get("avx2")
    out["cores_seen"] = round(many / one, 2) if one else None  # ~threads on real cores, ~1 on hyperthreads
    return out


def main():
    ap = arg_parser(__doc__, "fma_peak.json", threads=None)
    ap.add_argument("--iters", type=int, default=400_000_000)
    ap.add_argument("--threads", type=int, default=0, help="threads (default: torch's)")
    args = ap.parse_args()
    res = measure(args.threads or None, args.iters)
    for name, v in res["gflops_peak"].items():
        print(f"{name}: measured peak {v:.1f} GFLOP/s on {res['threads']} threads, "
              f"{res['gflops_peak_one_thread'][name]:.1f} on one ({isa()})", flush=True)
    print(f"cores seen: {res['cores_seen']} (total over one thread, AVX2)")
    write_result(res, args.out)


if __name__ == "__main__":
    main()
