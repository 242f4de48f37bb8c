// The sweep over vocabulary tiles that the fused CPU ops share (ops.lens_stats,
// ops.logit_extremes): rows cut into groups, W_U cut into tiles; each tile is packed once
// and multiplied by every group with our own f32 tile GEMM (csrc/core/f32_gemm.h), the bf16
// GEMM (csrc/core/bf16_gemm.h) or ATen's (the generic ISA level), and each [rows x tile]
// block of logits is handed to the caller's epilogue while it is in cache. Logits never
// exist for more than one tile per thread.
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "../core/aligned.h"
#include "../core/gather_dot.h"

namespace fusedlens {

// W_U as the sweep multiplies it: float32 through the f32 tile kernel (or ATen's GEMM on the
// generic level), or bfloat16 through the bf16-dot tile kernel (the rows are rounded to bf16
// when the sweep packs them).
struct TileWeights {
  torch::Tensor w;     // [V, d] float32 or bfloat16, contiguous
  int64_t vocab_tile;  // from sweep_vocab_tile
  bool bf16() const { return w.scalar_type() == torch::kBFloat16; }
  bool own_f32() const;  // float32 through our own tile kernel (not ATen's)
};

// The tile length the sweep uses for a requested one: whole register-tile panels for our f32
// kernel (AVX-512: 48 columns, so 1,024 becomes 1,008), else at least 32.
int64_t sweep_vocab_tile(const torch::Tensor& w, int64_t vocab_tile);

// Rows per group for n rows when about `rows_wanted` are wanted per group: equal groups whose
// count is a multiple of the threads (1,024 rows in groups of 248 left one of two threads 744
// rows and the other 280).
int64_t sweep_group_rows(int64_t n, int64_t rows_wanted);

// One group of rows multiplied by every tile: `a` holds them as float32 [..., d] (a view is
// fine: the sweep copies it to [rows, d] and packs it, per group, on the threads).
struct TileGroup {
  torch::Tensor a;
  AlignedVector<bf16> a16;   // the rows as bf16, even row length (bf16 sweep)
  AlignedVector<float> a32;  // the rows packed for the f32 tile kernel
  int64_t rows;
};

// The epilogue of one (group, tile): logits of group `group`'s rows r against vocabulary ids
// [v0, v0 + width) at tile[r * ld + j] (writable scratch of the calling thread, valid only
// during the call). Groups of one tile run in parallel, tiles in increasing v0.
using TileFn = std::function<void(int64_t group, float* tile, int64_t ld, int64_t v0, int64_t width)>;

// Every tile of tw.w times every group, each block passed to fn. The loop over tiles is the
// outer one: each W_U tile is packed once, by all threads together (panels are independent),
// and then serves every group on every thread. (Packing per thread and unit of groups cost
// 2 % of a 31-site lens sweep, and a fifth of a one-site sweep of 512 tokens.)
void sweep_tiles(const TileWeights& tw, std::vector<TileGroup>& groups, const TileFn& fn);

}  // namespace fusedlens
