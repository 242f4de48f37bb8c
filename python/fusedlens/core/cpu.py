"""What CPU this is and which kernel variants the build holds, so every report says where it ran.

The project's machines come as AVX2 + FMA (Zen 3) and AVX-512 + AVX512-BF16 (Zen 4,
Sapphire Rapids); numbers and failures differ between them, so `fusedlens info` and
every bench result carry `machine()`. One build holds every kernel variant
(csrc/core/isa/); the best the CPU supports runs unless FUSEDLENS_ISA forces another.
"""
from __future__ import annotations

import os
import platform


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, feature flags) from /proc/cpuinfo; empty where there is no procfs."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def isa_level(flags: set[str] | None = None) -> str:
    """The widest ISA level the CPU offers that fusedlens kernels know:
    'AVX512-BF16', 'AVX-512', 'AVX2' (with FMA), 'NEON' or 'generic'."""
    if flags is None:
        flags = _cpuinfo()[1]
    if {"avx512f", "avx512_bf16"} <= flags:
        return "AVX512-BF16"
    if "avx512f" in flags:
        return "AVX-512"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    if "asimd" in flags or platform.machine() in ("aarch64", "arm64"):
        return "NEON"
    return "generic"


ISA_LEVELS = ("generic", "avx2", "avx512", "avx512bf16")  # the kernel variants every build holds


def supported_isas() -> list[str]:
    """The kernel ISA levels this CPU can run (each can be forced with FUSEDLENS_ISA)."""
    from .backends import _C

    if _C is None:
        return []
    return list(ISA_LEVELS[:ISA_LEVELS.index(_C.cpu_isa()) + 1])


def build_variants() -> dict:
    """The kernel variants: which ISA level runs (chosen at import, or FUSEDLENS_ISA), the best
    this CPU offers, and what that means for the lens epilogue and the bf16 GEMM (whose dot
    instructions are used only where measured faster than fp32 FMA, bf16_dot_speedup > 1.25,
    or where FUSEDLENS_ISA=avx512bf16 forces them)."""
    from .backends import _C

    if _C is None:
        return {"extension": False}
    return {"extension": True, "isa": _C.isa(), "cpu_isa": _C.cpu_isa(), "compiled": list(ISA_LEVELS),
            "avx512_epilogue": bool(_C.has_avx512_epilogue()), "bf16_dot": bool(_C.has_bf16_dot()),
            "bf16_dot_speedup": round(float(_C.bf16_dot_speedup()), 3)}


def machine() -> dict:
    """CPU model, ISA level, the build's kernel variants, cores and torch threads: one JSON-able dict."""
    import torch

    model, flags = _cpuinfo()
    return {"cpu": model, "isa": isa_level(flags), "kernels": build_variants(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
