#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace fusedlens {

namespace {
std::atomic<int> g_active{-1};
std::atomic<bool> g_forced{false};

bool x86() {
#if defined(__x86_64__) || defined(_M_X64)
  return true;
#else
  return false;
#endif
}
}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
    default: return "generic";
  }
}

bool isa_from_name(const char* name, Isa* out) {
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16})
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  return false;
}

Isa cpu_isa() {
  if (!x86()) return Isa::generic;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Isa::avx512bf16;
  if (avx512) return Isa::avx512;
  if (avx2) return Isa::avx2;
#endif
  return Isa::generic;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_acquire);
  if (v < 0) {
    Isa isa = cpu_isa();
    const char* forced = std::getenv("FUSEDLENS_ISA");
    Isa want;
    // An unknown name or a level the CPU lacks keeps the detected one; the Python side
    // checks the variable at import and says so.
    const bool applies =
        forced && *forced && isa_from_name(forced, &want) && static_cast<int>(want) <= static_cast<int>(isa);
    if (applies) isa = want;
    g_forced.store(applies, std::memory_order_release);
    v = static_cast<int>(isa);
    g_active.store(v, std::memory_order_release);
  }
  return static_cast<Isa>(v);
}

bool set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(cpu_isa())) return false;
  g_forced.store(true, std::memory_order_release);
  g_active.store(static_cast<int>(isa), std::memory_order_release);
  return true;
}

void reset_isa() { g_active.store(-1, std::memory_order_release); }

bool isa_forced() {
  active_isa();
  return g_forced.load(std::memory_order_acquire);
}

bool forced_isa_unavailable() {
  const char* forced = std::getenv("FUSEDLENS_ISA");
  Isa want;
  if (!forced || !*forced) return false;
  return !isa_from_name(forced, &want) || static_cast<int>(want) > static_cast<int>(cpu_isa());
}

const VecKernels& vec_kernels() {
  switch (active_isa()) {
    case Isa::avx512bf16:
    case Isa::avx512: return vec_kernels_avx512();
    case Isa::avx2: return vec_kernels_avx2();
    default: return vec_kernels_generic();
  }
}

}  // namespace fusedlens
