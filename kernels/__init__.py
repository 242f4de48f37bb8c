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

