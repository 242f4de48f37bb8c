"""`fusedlens info`: what the adapter finds in a model, the kernel backends, the CPU's ISA and kernel variants."""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..core.models import ModelOptions
from .options import add_arguments, from_args

HELP = "what the adapter finds in a model (layers, final norm, unembedding) and the CPU's ISA and kernel variants"


@dataclass(kw_only=True)
class InfoConfig(ModelOptions):
    pass


def main(args) -> int:
    from ..core.backends import available_backends
    from ..core.cpu import machine

    lm = from_args(InfoConfig, args).load()
    print(json.dumps({**lm.describe(), "backends": available_backends(lm.device), "machine": machine()}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help=HELP)
    add_arguments(p, InfoConfig)
    p.set_defaults(func=main)
