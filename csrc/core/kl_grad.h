// Per-row online pieces of the fused linear-KL loss (docs/design.md, "Tuned lens").
// Torch-free: the driver computes each tile of logits z = x·W_tileᵀ and feeds it here.
//
// One sweep over the vocabulary gives, for a lens row z and its token's final row z_f,
//   lse      = m + log s                        (online max m, s = Σ exp(z − m))
//   KL(p_f‖q) = w / s_f − lse_f + lse            (w = Σ exp(z_f − m_f)(z_f − z))
//   ∂KL/∂x   = Σ_v (q_v − p_f,v) c'_v W_v = a / s − b / s_f
// where a = Σ exp(z − m) c' W and b = Σ exp(z_f − m_f) c' W are accumulated like the
// output of flash attention: a row's accumulators are multiplied by the factor that
// `fold_softmax` returns whenever its running max grows. c' is the soft-cap slope
// (1 without a cap, when b is the same for every lens row of a token).
#pragma once
#include <cstdint>

namespace fusedlens {

struct SoftmaxState {
  float m, s;  // running max and Σ exp(z − m)
  void reset();
  float lse() const;
};

// Folds a tile z[0, width) into st; writes e[i] = exp(z[i] − m_new) and returns the
// factor exp(m_old − m_new) by which everything accumulated relative to m_old must be
// multiplied (0 on the first tile, where nothing has been accumulated).
float fold_softmax(SoftmaxState& st, const float* z, int64_t width, float* e);

// Σ e_f[i] (z_f[i] − z[i]): a tile's contribution to w (e_f relative to the current m_f).
float kl_tile_term(const float* e_f, const float* z_f, const float* z, int64_t width);

// out[i] = e[i] · (1 − (z[i]/cap)²): the soft-capped logit's slope dz/dy = 1 − tanh².
// z are the capped logits; out may alias e.
void times_cap_slope(const float* e, const float* z, float cap, float* out, int64_t width);

// KL(p_f ‖ q) from the sweep's totals (not clamped: its gradient must match it).
inline float kl_from_sums(float w, float s_final, float lse_final, float lse) {
  return w / s_final - lse_final + lse;
}

}  // namespace fusedlens
