// Online per-row statistics over vocabulary tiles (docs/design.md, "What ops.lens_stats
// computes"). Torch-free: the driver computes each tile of logits (a GEMM) and feeds
// it here; the tile is read once from cache and never written back to memory.
#pragma once
#include <cstdint>
#include <limits>

#include "isa.h"  // TileSets

namespace fusedlens {

constexpr int kMaxTopK = 32;
constexpr int kMaxSets = 16;  // token sets whose probability mass a row accumulates

// What one row needs to know before the sweep.
struct RowQuery {
  int64_t target_id;     // < 0: no target
  float target_logit;    // from the gather-dot; the rank threshold
  int64_t final_top1;    // the final layer's top-1 id for this token
  float final_top1_logit;
};

// A running top-k of one row, fed tile by tile in increasing id order: value[0, filled)
// descending, equal values by ascending id (the tie rule: an equal value goes after the ones
// already there, which have lower ids). The one top-k of the CPU kernels (lens statistics,
// logit extremes; a bottom-k is the top-k of the negated logits).
struct TopK {
  int k, filled;
  float value[kMaxTopK];
  int64_t id[kMaxTopK];

  void reset(int topk);  // empty, of size topk in [1, kMaxTopK]
  // Fold z[0, width) (ids v0 ...; tiles in increasing v0). max_z: the tile's max if the
  // caller has it (a tile whose max cannot beat the k-th value costs one compare), else
  // +infinity; only the positions above the k-th value, found by the vector kernel a chunk at
  // a time, are inserted.
  void fold(const float* z, int64_t v0, int64_t width, float max_z = std::numeric_limits<float>::infinity());
  void insert(float v, int64_t i);  // one logit of a later id than every one folded so far
};

// Running state of one row. u and s are relative to the running max m, so the
// entropy log(s) - u/s stays exact for large logits.
struct RowState {
  float m, s, u, kl;
  int64_t rank_target, rank_final_top1;
  float seen_target_logit;  // the sweep's own value at the target id
  TopK top;
  float set_s[kMaxSets];  // Σ exp(z - m) over each token set's members, relative to m as s is

  void reset(int topk);
  float lse() const;
  float entropy() const;
};

// Whether the AVX-512 epilogue runs (the active ISA, csrc/core/isa.h, has AVX-512).
bool has_avx512_epilogue();

// exp(x) for x <= 0 (relative error < 2e-7; exp(x < -87) is flushed to 0); correct up to x = 64.
float exp_nonpos(float x);

// Fold one tile of logits z[0, width) (vocab ids v0 ...) into a row's state.
// p_final / z_final: the final layer's probabilities and logits on the same tile
// (nullptr to skip KL). Counts exclude the row's own target/top-1 id, so rounding
// between the gather-dot and the tile GEMM can never make a token outrank itself.
// sets: the tile's token sets (n <= kMaxSets), whose exps add into st.set_s.
void fold_tile(RowState& st, const RowQuery& q, const float* z, int64_t v0, int64_t width,
               const float* p_final, const float* z_final, const TileSets& sets = {});

// The vector pieces of every online softmax here (the active ISA's, csrc/core/isa.h):
// the largest of z[0, width), and p[i] = exp(z[i] - shift) for z <= shift with Σ p.
float tile_max(const float* z, int64_t width);
float exp_shifted(const float* z, float shift, float* p, int64_t width);

// p[i] = exp(z[i] - lse) for the final row of a tile; returns their sum. The caller
// divides the KL term by the total over all tiles, which absorbs the rounding
// difference between the phase-1 lse and this sweep's logits.
inline float final_probs(const float* z, float lse, float* p, int64_t width) { return exp_shifted(z, lse, p, width); }

// z <- softcap(z + bias) in place over one tile row; bias may be null, cap <= 0 means none.
void bias_and_cap(float* z, const float* bias, float cap, int64_t width);

}  // namespace fusedlens
