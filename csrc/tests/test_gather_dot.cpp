// Standalone check of the C++ core against a double-precision loop, run by ctest.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/gather_dot.h"
#include "isa_guard.h"

using fusedlens::bf16;
using fusedlens::to_bf16;

template <typename W>
static int check(int64_t rows, int64_t d, int64_t vocab, bool with_bias, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int64_t> pick(-1, vocab - 1);  // -1: no target
  std::vector<float> x(rows * d);
  std::vector<W> w(vocab * d), b(vocab);
  std::vector<int64_t> ids(rows);
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) { if constexpr (sizeof(W) == 2) v = to_bf16(normal(rng)); else v = normal(rng); }
  for (auto& v : b) { if constexpr (sizeof(W) == 2) v = to_bf16(normal(rng)); else v = normal(rng); }
  for (auto& v : ids) v = pick(rng);
  std::vector<float> out(rows);
  fusedlens::gather_dot<W>(x.data(), d, w.data(), d, with_bias ? b.data() : nullptr, ids.data(),
                           out.data(), rows, d);
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (ids[r] < 0) { bad += !std::isnan(out[r]); continue; }
    double want = with_bias ? fusedlens::to_float(b[ids[r]]) : 0.0;
    for (int64_t j = 0; j < d; ++j) want += double(x[r * d + j]) * fusedlens::to_float(w[ids[r] * d + j]);
    if (std::fabs(out[r] - want) > 1e-5 * (1.0 + std::fabs(want))) ++bad;
  }
  std::printf("rows=%lld d=%lld vocab=%lld bias=%d w=%s: %s\n", (long long)rows, (long long)d,
              (long long)vocab, int(with_bias), sizeof(W) == 2 ? "bf16" : "f32", bad ? "FAIL" : "ok");
  return bad;
}

int main() {
  if (skip_this_isa()) return 77;
  std::mt19937 rng(std::random_device{}());
  int bad = 0;
  for (int64_t rows : {1, 7, 300})
    for (int64_t d : {1, 13, 576})
      for (bool bias : {false, true}) {
        bad += check<float>(rows, d, 1009, bias, rng);
        bad += check<bf16>(rows, d, 1009, bias, rng);
      }
  return bad ? 1 : 0;
}
