"""Triton kernels of fusedlens (the default backend on CUDA).

Triton is optional: `available()` says whether it imports. On a machine without a
GPU the kernels run on CPU tensors only under TRITON_INTERPRET=1 (tests do that).
"""
from __future__ import annotations

import importlib.util
import os


def available() -> bool:
    return importlib.util.find_spec("triton") is not None


def runs_on(device) -> bool:
    """Whether the Triton kernels can run on tensors of `device` here."""
    if not available():
        return False
    return str(device).startswith("cuda") or os.environ.get("TRITON_INTERPRET") == "1"



def autotuning() -> bool:
    """Whether GPU launches autotune their tiles (FUSEDLENS_TRITON_AUTOTUNE=0: the first configuration of
    each TUNE_SPACE, compiled once, e.g. for checks whose shapes are never timed)."""
    return os.environ.get("FUSEDLENS_TRITON_AUTOTUNE", "1") != "0"


def autotune(configs, key, **kwargs):
    """triton.autotune with a short benchmark per config: one warm-up call (it compiles) and then
    timed calls until ~20 ms or 3 calls, so tuning at real sizes (a call can take a second) costs a
    few calls per config, not triton's default of 100 ms of repeats after 5 estimating calls."""
    import triton

    def quick_bench(fn, quantiles=None, **_):
        import torch

        fn()
        torch.cuda.synchronize()
        times = []
        while len(times) < 3 and sum(times) < 20.0:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        best = sorted(times)[len(times) // 2]
        return [best] * len(quantiles) if quantiles else best

    try:
        return triton.autotune(configs=configs, key=key, do_bench=quick_bench, **kwargs)
    except TypeError:  # a triton without the do_bench argument: its own benchmark
        return triton.autotune(configs=configs, key=key, **kwargs)
