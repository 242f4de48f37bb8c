// The online KL pieces (kl_grad.h) against a direct double-precision computation on
// one lens row and its final row: lse, KL(p_f ‖ q), and a gradient-like weighted sum
// Σ_v (q_v − p_f,v) c'_v u_v for a random vector u (one column of W), accumulated
// with the rescale factors exactly as the drivers do.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/kl_grad.h"
#include "isa_guard.h"

using namespace fusedlens;

static int check(int64_t vocab, int64_t tile, float scale, float cap, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, scale);
  std::vector<float> z(vocab), zf(vocab), u(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    z[i] = normal(rng);
    zf[i] = normal(rng);
    u[i] = normal(rng) / scale;
    if (cap > 0) {
      z[i] = cap * std::tanh(z[i] / cap);
      zf[i] = cap * std::tanh(zf[i] / cap);
    }
  }
  auto lse_of = [](const std::vector<float>& x) {
    double m = *std::max_element(x.begin(), x.end()), s = 0;
    for (float v : x) s += std::exp(v - m);
    return m + std::log(s);
  };
  const double lse = lse_of(z), lse_f = lse_of(zf);
  double kl = 0, grad = 0, grad_scale = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double p = std::exp(zf[i] - lse_f), q = std::exp(z[i] - lse);
    const double slope = cap > 0 ? 1 - (double(z[i]) / cap) * (double(z[i]) / cap) : 1;
    kl += p * ((zf[i] - lse_f) - (z[i] - lse));
    grad += (q - p) * slope * u[i];
    grad_scale += (q + p) * std::fabs(u[i]);
  }

  SoftmaxState st, sf;
  st.reset();
  sf.reset();
  float w = 0, a = 0, b = 0;
  std::vector<float> e(tile), ef(tile);
  for (int64_t v0 = 0; v0 < vocab; v0 += tile) {
    const int64_t width = std::min(tile, vocab - v0);
    const float f_final = fold_softmax(sf, zf.data() + v0, width, ef.data());
    const float f_row = fold_softmax(st, z.data() + v0, width, e.data());
    w = w * f_final + kl_tile_term(ef.data(), zf.data() + v0, z.data() + v0, width);
    if (cap > 0) {
      times_cap_slope(e.data(), z.data() + v0, cap, e.data(), width);
      times_cap_slope(ef.data(), z.data() + v0, cap, ef.data(), width);
    }
    float da = 0, db = 0;
    for (int64_t i = 0; i < width; ++i) {
      da += e[i] * u[v0 + i];
      db += ef[i] * u[v0 + i];
    }
    a = a * f_row + da;
    b = b * f_final + db;
  }
  const double got_kl = kl_from_sums(w, sf.s, sf.lse(), st.lse());
  const double got_grad = a / st.s - b / sf.s;
  int bad = 0;
  if (std::fabs(st.lse() - lse) > 1e-5 * std::max(1.0, std::fabs(lse))) ++bad;
  if (std::fabs(got_kl - kl) > std::max(1e-4, 1e-5 * kl)) ++bad;
  if (std::fabs(got_grad - grad) > 1e-5 * grad_scale) ++bad;
  if (bad)
    std::printf("FAIL vocab=%lld tile=%lld scale=%g cap=%g: lse %g vs %g, kl %g vs %g, grad %g vs %g\n",
                static_cast<long long>(vocab), static_cast<long long>(tile), scale, cap, st.lse(), lse, got_kl,
                kl, got_grad, grad);
  return bad;
}

int main() {
  if (skip_this_isa()) return 77;
  std::mt19937 rng(std::random_device{}());  // fresh inputs every run
  int failures = 0;
  for (float cap : {0.f, 4.f})
    for (float scale : {1.f, 8.f, 60.f})
      for (auto [vocab, tile] : {std::pair<int64_t, int64_t>{1, 16}, {1009, 64}, {4096, 512}, {777, 1024}})
        failures += check(vocab, tile, scale, cap, rng);
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("kl_grad: all checks passed\n");
  return 0;
}
