// A run-time count (1..16) as a compile-time constant: f(std::integral_constant<int, n>), so that a
// kernel templated on it keeps per-count accumulators in registers (the token-set sums).
#pragma once
#include <type_traits>
#include <utility>

namespace fusedlens {

template <typename F, int... Ns>
inline void with_count(int n, F&& f, std::integer_sequence<int, Ns...>) {
  ((n == Ns + 1 ? f(std::integral_constant<int, Ns + 1>{}) : void()), ...);
}

template <typename F>
inline void with_count_16(int n, F&& f) {
  with_count(n, std::forward<F>(f), std::make_integer_sequence<int, 16>{});
}

}  // namespace fusedlens
