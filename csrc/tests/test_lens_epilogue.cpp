// The online tile epilogue against a direct double-precision computation on one row, and the
// running top-k (TopK) alone against a stable sort.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "../core/lens_epilogue.h"
#include "isa_guard.h"

using namespace fusedlens;

// ties: logits on a grid of 1/4, so many are equal and the top-k must follow the tie rule
// (ascending id among equals) across tiles and the vector kernels' chunks.
// ramp: z[i] += ramp * i, so that every tile raises the running max (by more than the
// one-pass sums' 64 when ramp * tile > 64, the path that sums a tile again).
static int check(int64_t vocab, int64_t tile, int k, float scale, std::mt19937& rng, bool ties = false,
                 float ramp = 0.f) {
  std::normal_distribution<float> normal(0.f, scale);
  std::vector<float> z(vocab), zf(vocab);
  for (auto& v : z) v = ties ? std::round(4.f * normal(rng)) / 4.f : normal(rng);
  for (int64_t i = 0; i < vocab; ++i) z[i] += ramp * static_cast<float>(i);
  for (auto& v : zf) v = normal(rng);
  const int64_t target = std::uniform_int_distribution<int64_t>(0, vocab - 1)(rng);
  // Direct double-precision statistics.
  auto lse_of = [](const std::vector<float>& x) {
    double m = *std::max_element(x.begin(), x.end()), s = 0;
    for (float v : x) s += std::exp(v - m);
    return m + std::log(s);
  };
  const double lse = lse_of(z), lse_f = lse_of(zf);
  double ent = 0, kl = 0;
  int64_t rank = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double lp = z[i] - lse, lpf = zf[i] - lse_f;
    ent -= std::exp(lp) * lp;
    kl += std::exp(lpf) * (lpf - lp);
    rank += z[i] > z[target];
  }
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return z[a] > z[b]; });

  RowState st;
  st.reset(k);
  RowQuery q{target, z[target], -1, std::nanf("")};
  std::vector<float> pf(tile);
  float pf_total = 0;
  for (int64_t v0 = 0; v0 < vocab; v0 += tile) {
    const int64_t w = std::min(tile, vocab - v0);
    pf_total += final_probs(zf.data() + v0, static_cast<float>(lse_f), pf.data(), w);
    fold_tile(st, q, z.data() + v0, v0, w, pf.data(), zf.data() + v0);
  }
  const double got_kl = st.kl / pf_total - lse_f + st.lse();
  int bad = 0;
  // written as !(err <= tol) so that a NaN fails
  bad += !(std::fabs(st.lse() - lse) <= 1e-4 + 1e-5 * std::fabs(lse));
  bad += !(std::fabs(st.entropy() - ent) <= 1e-4 + 1e-5 * ent);
  bad += !(std::fabs(got_kl - kl) <= 1e-4 + 1e-5 * kl);
  bad += st.rank_target != rank;
  for (int i = 0; i < k; ++i) bad += st.top.id[i] != order[i] || st.top.value[i] != z[order[i]];
  std::printf("vocab=%lld tile=%lld k=%d scale=%g%s ramp=%g: %s\n", (long long)vocab, (long long)tile, k, scale,
              ties ? " ties" : "", ramp, bad ? "FAIL" : "ok");
  return bad;
}

// TopK alone, fed in tiles of `tile`: its k values and ids are the first k of a stable sort
// (descending; equal values by ascending id), with and without the tile max given; and the
// top-k of -z, negated back, is the bottom-k (ascending, equal values by ascending id).
// grid > 0: values on a grid of 1/grid (many exact ties; zeros of both signs).
static int check_topk(int64_t vocab, int64_t tile, int k, float grid, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> z(vocab), neg(vocab);
  for (auto& v : z) {
    v = grid > 0 ? std::round(grid * normal(rng)) / grid : normal(rng);
    if (v == 0.f && (rng() & 1)) v = -0.f;
  }
  for (int64_t i = 0; i < vocab; ++i) neg[i] = -z[i];
  std::vector<int64_t> down(vocab), up(vocab);
  std::iota(down.begin(), down.end(), 0);
  std::iota(up.begin(), up.end(), 0);
  std::stable_sort(down.begin(), down.end(), [&](int64_t a, int64_t b) { return z[a] > z[b]; });
  std::stable_sort(up.begin(), up.end(), [&](int64_t a, int64_t b) { return z[a] < z[b]; });
  TopK top, top_max, bottom;
  top.reset(k);
  top_max.reset(k);
  bottom.reset(k);
  for (int64_t v0 = 0; v0 < vocab; v0 += tile) {
    const int64_t w = std::min(tile, vocab - v0);
    top.fold(z.data() + v0, v0, w);
    top_max.fold(z.data() + v0, v0, w, *std::max_element(z.data() + v0, z.data() + v0 + w));
    bottom.fold(neg.data() + v0, v0, w);
  }
  int bad = top.filled != k || top_max.filled != k || bottom.filled != k;
  for (int i = 0; i < k; ++i) {
    bad += top.id[i] != down[i] || top.value[i] != z[down[i]];
    bad += top_max.id[i] != top.id[i] || top_max.value[i] != top.value[i];
    bad += bottom.id[i] != up[i] || -bottom.value[i] != z[up[i]];
  }
  std::printf("topk vocab=%lld tile=%lld k=%d grid=%g: %s\n", (long long)vocab, (long long)tile, k, grid,
              bad ? "FAIL" : "ok");
  return bad;
}

int main() {
  if (skip_this_isa()) return 77;
  std::mt19937 rng(std::random_device{}());
  int bad = 0;
  for (int64_t vocab : {1, 7, 1000, 50257})
    for (int64_t tile : {16, 300, 1024})
      for (int k : {1, 32})
        for (bool ties : {false, true})
          if (k <= vocab) bad += check(vocab, tile, k, 3.f, rng, ties);
  bad += check(4096, 256, 8, 60.f, rng);
  // TopK: k 1 and 32, widths and tiles that are multiples of nothing (the vector kernels'
  // chunks and lanes end mid-tile), exact ties on a coarse grid, a tile of one id, k = vocab.
  for (int64_t vocab : {1, 33, 1009, 5003})
    for (int64_t tile : {1, 13, 257, 1000})
      for (int k : {1, 7, 32})
        for (float grid : {0.f, 1.f, 0.25f})
          if (k <= vocab && (tile > 1 || vocab <= 1009)) bad += check_topk(vocab, tile, k, grid, rng);
  bad += check_topk(32, 5, 32, 1.f, rng);
  for (int64_t tile : {16, 300})  // the max rising by 8 per tile of 16 (rescaled), by 150 per 300 (summed again)
    bad += check(3000, tile, 4, 3.f, rng, false, 0.5f);
  bad += check(3000, 300, 4, 3.f, rng, false, -0.5f);  // falling: the first tile holds the max
  // exp_nonpos against std::exp.
  double worst = 0;
  for (float x = -87.f; x <= 64.f; x += 0.001f)  // up to 64: the one-pass tile sums' range
    worst = std::max(worst, std::fabs(exp_nonpos(x) / std::exp(double(x)) - 1));
  std::printf("exp_nonpos worst relative error %.3g\n", worst);
  bad += !(worst <= 2e-7);
  // The vectorised exp inside final_probs, over the same range (tail lanes included).
  std::vector<float> xs, ps;
  for (float x = -87.f; x <= 64.f; x += 0.001f) xs.push_back(x);
  ps.resize(xs.size());
  final_probs(xs.data(), 0.f, ps.data(), static_cast<int64_t>(xs.size()));
  worst = 0;
  for (size_t i = 0; i < xs.size(); ++i) worst = std::max(worst, std::fabs(ps[i] / std::exp(double(xs[i])) - 1));
  std::printf("final_probs exp worst relative error %.3g\n", worst);
  bad += !(worst <= 2e-7);
  return bad ? 1 : 0;
}
