// Included first by a translation unit of this folder: everything after it is compiled for
// AVX2 + FMA, whatever the build's -march. End the file with target_end.h.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#endif
#include <immintrin.h>
