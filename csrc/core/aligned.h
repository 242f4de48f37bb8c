// Buffers on 64-byte boundaries: the tile kernels' vector loads and stores then never
// straddle two cache lines (std::vector's 16-byte alignment made every other AVX2 load
// and every AVX-512 load of a packed tile a split load).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace fusedlens {

template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <typename U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};

template <typename T>
using AlignedVector = std::vector<T, Aligned64<T>>;

}  // namespace fusedlens
