// The k largest and k smallest logits of each row over the whole vocabulary on CPU
// (ops.logit_extremes, for direct logit attribution): the shared tile sweep
// (tile_sweep.h) computes one [rows x vocab_tile] block of raw logits r · W_Uᵀ at a time,
// and the top-k of csrc/core (TopK) folds it twice per row: once as it is, once negated
// (the bottom-k is the top-k of -z under the same tie rule).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "../core/bf16_gemm.h"
#include "../core/lens_epilogue.h"
#include "tile_sweep.h"

// rows [R, d] float32; w [V, d] float32 or bfloat16 (then the rows are rounded to bf16 first,
// so the extremes are those of bf16(rows) · W). Returns top_ids, top_logits (descending),
// bottom_ids, bottom_logits (ascending), each [R, k]; equal logits by ascending id.
std::vector<torch::Tensor> logit_extremes(const torch::Tensor& rows_in, const torch::Tensor& w_in, int64_t k,
                                          int64_t row_block, int64_t vocab_tile) {
  TORCH_CHECK(rows_in.dim() == 2 && w_in.dim() == 2, "logit_extremes: rows [R, d] and w [V, d] expected");
  TORCH_CHECK(rows_in.scalar_type() == torch::kFloat32, "logit_extremes: float32 rows expected");
  TORCH_CHECK(w_in.scalar_type() == torch::kFloat32 || w_in.scalar_type() == torch::kBFloat16,
              "logit_extremes: float32 or bfloat16 w expected");
  TORCH_CHECK(rows_in.size(1) == w_in.size(1), "logit_extremes: shape mismatch");
  TORCH_CHECK(rows_in.size(0) >= 1 && w_in.size(0) >= 1 && w_in.size(1) >= 1, "logit_extremes: empty input");
  TORCH_CHECK(k >= 1 && k <= fusedlens::kMaxTopK && k <= w_in.size(0), "logit_extremes: k out of range");
  TORCH_CHECK(row_block >= 1 && vocab_tile >= 1, "logit_extremes: row_block and vocab_tile must be positive");
  // As lens_stats: the rows the bf16 dot product sees; without bf16 instructions, the same
  // numbers go through the float32 GEMM.
  const bool round_bf16 = w_in.scalar_type() == torch::kBFloat16;
  const auto rows = round_bf16 ? rows_in.to(torch::kBFloat16).to(torch::kFloat32) : rows_in.contiguous();
  const auto w = round_bf16 && !fusedlens::has_bf16_dot() ? w_in.to(torch::kFloat32) : w_in.contiguous();
  const int64_t R = rows.size(0);
  const fusedlens::TileWeights tw{w, fusedlens::sweep_vocab_tile(w, vocab_tile)};

  std::vector<fusedlens::TopK> top(R), bottom(R);
  for (int64_t r = 0; r < R; ++r) {
    top[r].reset(static_cast<int>(k));
    bottom[r].reset(static_cast<int>(k));
  }
  const int64_t per_group = fusedlens::sweep_group_rows(R, row_block);
  std::vector<fusedlens::TileGroup> groups;
  for (int64_t r0 = 0; r0 < R; r0 += per_group) {
    const int64_t m = std::min(per_group, R - r0);
    groups.push_back(fusedlens::TileGroup{rows.narrow(0, r0, m), {}, {}, m});
  }
  fusedlens::sweep_tiles(tw, groups, [&](int64_t gi, float* tile, int64_t ld, int64_t v0, int64_t width) {
    thread_local std::vector<float> neg;  // the tile row negated: its top-k is the row's bottom-k
    if (static_cast<int64_t>(neg.size()) < width) neg.resize(width);
    const int64_t first = gi * per_group;
    for (int64_t r = 0; r < groups[gi].rows; ++r) {
      const float* z = tile + r * ld;
      top[first + r].fold(z, v0, width);
      for (int64_t j = 0; j < width; ++j) neg[j] = -z[j];
      bottom[first + r].fold(neg.data(), v0, width);
    }
  });

  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto top_ids = torch::empty({R, k}, i64), bottom_ids = torch::empty({R, k}, i64);
  auto top_logits = torch::empty({R, k}, f32), bottom_logits = torch::empty({R, k}, f32);
  int64_t *ti = top_ids.data_ptr<int64_t>(), *bi = bottom_ids.data_ptr<int64_t>();
  float *tv = top_logits.data_ptr<float>(), *bv = bottom_logits.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < k; ++i) {
      ti[r * k + i] = top[r].id[i];
      tv[r * k + i] = top[r].value[i];
      bi[r * k + i] = bottom[r].id[i];
      bv[r * k + i] = -bottom[r].value[i];
    }
  return {top_ids, top_logits, bottom_ids, bottom_logits};
}
