// Row-wise gather-dot: out[r] = <x[r, :], w[ids[r], :]> + bias[ids[r]].
// The target-logit step of the lens (docs/design.md): each token's logit for its own
// next token, computed before the vocabulary sweep so that the sweep can count
// its rank. Plain C++ (no torch) so that the CMake build and ctest exercise it.
#pragma once
#include <cstdint>
#include <cstring>

namespace fusedlens {

// bfloat16 storage: the top 16 bits of an IEEE float32.
struct bf16 {
  uint16_t bits;
};

inline bf16 to_bf16(float f) {  // round to nearest even (NaN stays NaN: its top bits are kept)
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7FFF + ((u >> 16) & 1);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// x: [rows, d] float32 with row stride ldx; w: [vocab, d] with row stride ldw;
// bias: [vocab] or nullptr; ids: [rows], ids[r] < 0 means "no target" (out = NaN).
// ids must already be checked to lie below vocab. Accumulates in double.
template <typename W>
void gather_dot(const float* x, int64_t ldx, const W* w, int64_t ldw, const W* bias,
                const int64_t* ids, float* out, int64_t rows, int64_t d);

}  // namespace fusedlens
