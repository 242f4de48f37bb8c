"""The one checkpoint scheme: a state file written atomically, stamped with what must match to resume.

Used by `fusedlens run` (per-rank sums and the corpus position) and tuned-lens training
(optimizer, scheduler, stream position). A fingerprint is a dict; resuming with another
one names the fields that differ. An unreadable file (a kill mid-copy, a full disk) is a
clear error naming the file, never a torch traceback. A state file is tensors, numbers, strings and
plain containers only, and is loaded as such (weights_only): a crafted one cannot run code.
"""
from __future__ import annotations

import os

import torch

from .files import load_torch


class StateFile:
    def __init__(self, path: str, fingerprint: dict):
        self.path, self.fingerprint = path, dict(fingerprint)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> dict | None:
        """The saved state, None if there is none; ValueError if it is unreadable or of another run."""
        if not self.exists():
            return None
        try:
            state = load_torch("checkpoint", self.path)  # weights_only: a crafted file cannot run code
        except ValueError as err:
            raise ValueError(f"{err}; delete it to start the run over, or restore it from a copy") from None
        saved = state.get("fingerprint") if isinstance(state, dict) else None
        if saved != self.fingerprint:
            saved = saved if isinstance(saved, dict) else {}
            changed = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise ValueError(f"out: {os.path.dirname(os.path.abspath(self.path))} holds a checkpoint of a different run "
                             f"(other {', '.join(changed) or 'format'}: "
                             f"{', '.join(f'{k}={saved.get(k)!r}' for k in changed[:4])}); "
                             "choose another output folder or delete it")
        return state

    def save(self, state: dict) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        torch.save({**state, "fingerprint": self.fingerprint}, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)
