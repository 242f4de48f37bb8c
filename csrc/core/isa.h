// Runtime choice of the instruction set the vector kernels run with. Each hot loop is
// compiled once per ISA level in its own translation unit (csrc/core/isa/*.cpp, each
// with its own target pragma), so one build runs at full speed on any x86-64 from
// AVX2 up, and correctly without it. The best level the CPU supports is chosen at
// first use; FUSEDLENS_ISA=generic|avx2|avx512|avx512bf16 forces one.
#pragma once
#include <cstdint>

namespace fusedlens {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

const char* isa_name(Isa isa);
bool isa_from_name(const char* name, Isa* out);

// The best level this CPU (and this compiler's build) supports.
Isa cpu_isa();

// The level the kernels run with: FUSEDLENS_ISA if set (at first use), else cpu_isa().
Isa active_isa();

// Force a level; false (and nothing changes) if the CPU lacks it.
bool set_isa(Isa isa);

// Back to the level FUSEDLENS_ISA names, else the detected one.
void reset_isa();

// Whether the active level was forced (FUSEDLENS_ISA or set_isa) rather than detected.
bool isa_forced();

// FUSEDLENS_ISA names a level this CPU lacks (or no level at all): tests skip (exit 77).
bool forced_isa_unavailable();

// Token sets as a tile sees them: id[i] of token v0 + i (int8, -1 = in no set), and one of two
// more forms of the same membership: for dense sets, set-major columns member[j * stride + i]
// = 1 if id[i] == j else 0 (the kernels that multiply each exp by it use them); for sparse ones,
// the ids of the tile's members, ascending: listed[0, n_listed). n = 0: no sets.
struct TileSets {
  const int8_t* id = nullptr;
  const float* member = nullptr;
  int64_t stride = 0;
  const int32_t* listed = nullptr;
  int64_t n_listed = 0;
  int n = 0;
};

// The vector pieces of the lens epilogue and the online softmax, one table per ISA.
struct VecKernels {
  float (*tile_max)(const float* z, int64_t width);
  float (*exp_shifted)(const float* z, float shift, float* p, int64_t width);
  // Over one tile: s = Σ exp(z - m), u = Σ exp(z - m)(z - m), kl = Σ p_final (z_final - z)
  // (p_final may be null), the counts of z above zt and above zf, and top = max z. m need
  // not be the max (the running max of earlier tiles is): valid while top - m <= 64.
  // e_out (may be null): each exp(z - m), for the token-set sums.
  void (*tile_sums)(const float* z, int64_t width, float m, float zt, float zf, const float* p_final,
                    const float* z_final, float* s, float* u, float* kl, int64_t* above_t, int64_t* above_f,
                    float* top, float* e_out);
  // The positions i in [0, width) with z[i] > threshold, ascending, into idx; returns how many.
  int64_t (*above)(const float* z, int64_t width, float threshold, int32_t* idx);
  // out[j] += Σ e[i] over the i with sets.id[i] == j, for j < sets.n; e from tile_sums' e_out.
  void (*set_sums)(const float* e, int64_t width, const TileSets& sets, float* out);
};

const VecKernels& vec_kernels();  // of the active ISA

// Per-ISA tables (defined in csrc/core/isa/).
const VecKernels& vec_kernels_generic();
const VecKernels& vec_kernels_avx2();
const VecKernels& vec_kernels_avx512();

}  // namespace fusedlens
