"""Config dataclass fields that carry their own help: the command line is built from them (cli.config)."""
from __future__ import annotations

import dataclasses


def option(default, help: str, **meta):
    """A dataclass field with its command-line metadata (mutable defaults are copied per instance)."""
    meta["help"] = help
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


BACKEND_HELP = "kernel backend: torch (float64 reference), cpu (C++) or triton (CUDA); default: the fastest here"


def out_default(command: str) -> str:
    """Every command writes under fusedlens_out/<command> unless told otherwise."""
    return f"fusedlens_out/{command}"


@dataclasses.dataclass(kw_only=True)
class ModelOptions:
    """Which model: the fields every command that loads one shares."""

    model: str | None = option(None, "HF name, folder or .gguf file (default: the embedded SmolLM2-135M)")
    gguf_file: str | None = option(None, "GGUF file name inside --model's folder")

    def load(self, **kw):
        from .models import load_model

        return load_model(self.model, gguf_file=self.gguf_file, **kw)
