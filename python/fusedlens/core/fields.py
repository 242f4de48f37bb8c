"""Config dataclass fields that carry their own help, so a config documents each field once and a
front end (the command line, cli.options) is built from it without repeating a default."""
from __future__ import annotations

import dataclasses


def option(default, help: str, **meta):
    """A dataclass field with its help and front-end hints (mutable defaults are copied per instance)."""
    meta["help"] = help
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
