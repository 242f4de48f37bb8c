// Each C++ test runs once per ISA level (CMakeLists.txt sets FUSEDLENS_ISA); a level this
// CPU lacks is skipped with ctest's skip code.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "isa.h"

inline bool skip_this_isa() {
  if (fusedlens::forced_isa_unavailable()) {
    std::printf("FUSEDLENS_ISA=%s: not available on this CPU (best: %s), skipped\n", std::getenv("FUSEDLENS_ISA"),
                fusedlens::isa_name(fusedlens::cpu_isa()));
    return true;
  }
  std::printf("ISA: %s\n", fusedlens::isa_name(fusedlens::active_isa()));
  return false;
}
