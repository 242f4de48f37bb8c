#include "tile_sweep.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "../core/bf16_gemm.h"
#include "../core/f32_gemm.h"

namespace fusedlens {

bool TileWeights::own_f32() const { return !bf16() && f32_gemm_kernel().fast; }

int64_t sweep_vocab_tile(const torch::Tensor& w, int64_t vocab_tile) {
  if (w.scalar_type() != torch::kBFloat16 && f32_gemm_kernel().fast) {
    const int64_t nr = f32_gemm_kernel().nr;
    return std::max(nr, vocab_tile / nr * nr);
  }
  return std::max<int64_t>(32, vocab_tile);
}

int64_t sweep_group_rows(int64_t n, int64_t rows_wanted) {
  const int64_t threads = at::get_num_threads();
  const int64_t groups = threads * std::max<int64_t>(1, (n + threads * rows_wanted / 2) / (threads * rows_wanted));
  return std::max<int64_t>(1, (n + groups - 1) / groups);
}

void sweep_tiles(const TileWeights& tw, std::vector<TileGroup>& groups, const TileFn& fn) {
  const int64_t V = tw.w.size(0), d = tw.w.size(1), k_pad = d + (d & 1);
  const bool bf16 = tw.bf16(), own_f32 = tw.own_f32();
  const int64_t n_groups = static_cast<int64_t>(groups.size());
  int64_t max_rows = 0;
  for (auto& g : groups) max_rows = std::max(max_rows, own_f32 ? f32_rows_padded(g.rows) : g.rows);
  at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      TileGroup& g = groups[gi];
      g.a = g.a.reshape({g.rows, d}).contiguous();  // this group's rows: a copy made here, per group
      if (bf16) {
        g.a16.resize(g.rows * k_pad);
        round_rows_bf16(g.a.data_ptr<float>(), d, g.rows, d, g.a16.data());
      } else if (own_f32) {
        g.a32.resize(f32_rows_padded(g.rows) * d);
        f32_pack_a(g.a.data_ptr<float>(), d, g.rows, d, g.a32.data());
      }
      if (bf16 || own_f32) g.a = torch::Tensor();  // packed: the float32 copy is no longer read
    }
  });
  const int64_t ld_max = own_f32 ? f32_cols_padded(tw.vocab_tile) : (tw.vocab_tile + 31) / 32 * 32;
  std::vector<AlignedVector<float>> scratch(at::get_num_threads());
  AlignedVector<uint32_t> packed(bf16 ? packed_b_size(tw.vocab_tile, d) : 0);
  AlignedVector<float> packed32(own_f32 ? f32_cols_padded(tw.vocab_tile) * d : 0);
  const auto* w16 = bf16 ? reinterpret_cast<const fusedlens::bf16*>(tw.w.data_ptr()) : nullptr;
  const int64_t panel = bf16 ? kPackPanel : own_f32 ? f32_gemm_kernel().nr : 1;
  for (int64_t v0 = 0; v0 < V; v0 += tw.vocab_tile) {
    const int64_t width = std::min(tw.vocab_tile, V - v0);
    const int64_t ld = bf16 ? (width + 31) / 32 * 32 : own_f32 ? f32_cols_padded(width) : width;
    if (bf16 || own_f32) {
      // whole panels per task, a few tasks per thread
      const int64_t panels = (width + panel - 1) / panel;
      const int64_t per_task = std::max<int64_t>(1, panels / (4 * at::get_num_threads()));
      at::parallel_for(0, (panels + per_task - 1) / per_task, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t j0 = t * per_task * panel, cols = std::min(per_task * panel, width - j0);
          if (cols <= 0) continue;
          if (bf16)
            pack_b(w16 + (v0 + j0) * d, d, cols, d, packed.data() + j0 * (k_pad / 2));
          else
            f32_pack_b(tw.w.data_ptr<float>() + (v0 + j0) * d, d, cols, d, packed32.data() + j0 * d);
        }
      });
    }
    at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
      AlignedVector<float>& sc = scratch[at::get_thread_num()];
      if (sc.empty()) sc.resize(max_rows * ld_max);
      float* tile = sc.data();
      for (int64_t gi = g0; gi < g1; ++gi) {
        TileGroup& g = groups[gi];
        if (bf16) {
          gemm_bf16(g.a16.data(), k_pad, g.rows, d, packed.data(), width, tile, ld);
        } else if (own_f32) {
          f32_gemm(g.a32.data(), g.rows, d, packed32.data(), width, tile, ld);
        } else {
          auto out = torch::from_blob(tile, {g.rows, width}, g.a.options());
          at::mm_out(out, g.a, tw.w.narrow(0, v0, width).t());
        }
        fn(gi, tile, ld, v0, width);
      }
    });
  }
}

}  // namespace fusedlens
