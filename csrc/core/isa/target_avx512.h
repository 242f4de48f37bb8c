// Included first by a translation unit of this folder: everything after it is compiled for
// AVX-512 (F, DQ, BW, VL; FMA, AVX2), plus AVX512-BF16 where FUSEDLENS_TARGET_BF16 is defined
// before it, whatever the build's -march. End the file with target_end.h.
#if defined(__GNUC__) && !defined(__clang__) && defined(FUSEDLENS_TARGET_BF16)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2,avx512bf16")
#elif defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2")
#elif defined(__clang__) && defined(FUSEDLENS_TARGET_BF16)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2,avx512bf16"))), \
                             apply_to = function)
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2"))), apply_to = function)
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // false positives inside GCC 12's AVX-512 headers
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
