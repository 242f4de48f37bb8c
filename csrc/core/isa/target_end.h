// The end of a translation unit that began with target_avx2.h or target_avx512.h.
#if defined(__clang__)
#pragma clang attribute pop
#endif
