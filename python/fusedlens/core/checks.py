"""Input validation shared by every public entry: a clear ValueError naming the argument."""
from __future__ import annotations

import torch

IGNORE_INDEX = -100  # target id meaning "no next token here" (as in HF's loss)


class AdapterError(ValueError):
    """The adapter could not find or express a part of the model (or find the model's files)."""


def check_tensor(name: str, t, *, ndim=None, floating: bool = False, finite: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: empty tensor (shape {tuple(t.shape)})")
    if floating and not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: contains {bad} NaN/Inf value(s)")
    return t


def check_ids(name: str, ids, vocab_size: int, *, rows: int | None = None, allow_ignore: bool = True) -> torch.Tensor:
    """Token ids in [0, vocab); IGNORE_INDEX allowed where allow_ignore."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise ValueError(f"{name}: expected an integer tensor, got {ids.dtype}")
    if ids.numel() == 0:
        raise ValueError(f"{name}: empty tensor")
    if rows is not None and ids.numel() != rows:
        raise ValueError(f"{name}: expected {rows} ids (one per row), got shape {tuple(ids.shape)}")
    valid = (ids >= 0) & (ids < vocab_size)
    if allow_ignore:
        valid |= ids == IGNORE_INDEX
    if not bool(valid.all()):
        bad = ids[~valid]
        raise ValueError(f"{name}: {bad.numel()} id(s) outside [0, {vocab_size}), e.g. {int(bad[0])}"
                         + (f" (use {IGNORE_INDEX} for no target)" if allow_ignore else ""))
    return ids.long()


def check_same_width(name: str, t: torch.Tensor, width: int, what: str) -> None:
    if t.shape[-1] != width:
        raise ValueError(f"{name}: last dimension {t.shape[-1]} does not match {what} ({width})")


OWNER_FILE = ".fusedlens-command"  # which command's results a folder holds
_created: list[str] = []  # folders check_output_dir made in this process, outermost first
_stamped: list[str] = []  # stamps it wrote


def check_output_dir(name: str, path: str, command: str | None = None) -> str:
    """A folder results can be written to: created if missing; a file there, or a folder that
    cannot be written, is an error before any work starts (not a traceback at the end).

    command: the command writing there. The folder is stamped with it, and a folder stamped by
    another command is refused, so that no command overwrites (or mixes its files with) another's.
    Folders this makes are removed again by `remove_unused_output_dirs` if the command fails.
    """
    import os
    import tempfile

    if not isinstance(path, str) or not path:
        raise ValueError(f"{name}: expected a folder path, got {path!r}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name}: {path} is a file, not a folder")
    owner_file = os.path.join(path, OWNER_FILE)
    if command is not None and os.path.isfile(owner_file):
        try:
            with open(owner_file, encoding="utf-8") as f:
                owner = f.read().strip()
        except (OSError, UnicodeDecodeError):
            owner = "?"
        if owner != command:
            raise ValueError(f"{name}: {path} holds the results of `fusedlens {owner}`; `fusedlens {command}` "
                             "would overwrite them: choose another folder")
    missing, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    try:
        os.makedirs(path, exist_ok=True)
        _created.extend(reversed(missing))
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fusedlens-write-check-"):
            pass
        if command is not None and not os.path.isfile(owner_file):
            with open(owner_file, "w", encoding="utf-8") as f:
                f.write(command + "\n")
            _stamped.append(owner_file)
    except OSError as err:
        raise ValueError(f"{name}: {path} cannot be written to ({err.strerror or err})") from None
    return path


def remove_unused_output_dirs() -> None:
    """After a command failed: remove the stamps and the folders check_output_dir made that hold
    nothing else (a failed command leaves no empty output folder behind)."""
    import os

    for stamp in _stamped:
        try:
            if os.listdir(os.path.dirname(stamp)) == [OWNER_FILE]:
                os.remove(stamp)
        except OSError:
            pass
    for path in reversed(_created):
        try:
            os.rmdir(path)  # only if empty
        except OSError:
            pass
    _created.clear()
    _stamped.clear()
