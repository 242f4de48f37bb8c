"""Files in and out. Writing: `write_json`, the one JSON writer of every analysis and report.

Reading files the tool did not write: every reader here names the argument and the file in a
one-line ValueError, and none of them can run code (JSON is data; torch files load with
weights_only=True, which unpickles tensors and plain containers only).

The argument name comes first in every message ("prompts: ..."), as everywhere else in fusedlens,
so a researcher knows which flag to fix.
"""
from __future__ import annotations

import json
import os
import re


def check_file(name: str, path) -> str:
    """An existing regular file: a missing path or a folder is an error naming the argument."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name}: expected a file path, got {path!r}")
    path = str(path)
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path} is a folder; give a file")
    if not os.path.exists(path):
        raise ValueError(f"{name}: {path} not found")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{name}: {path} cannot be read (permission denied)")
    return path


def read_text(name: str, path) -> str:
    """A whole file as strict UTF-8 text: a file in another encoding is refused, never decoded with
    replacement characters that would silently change the tokens."""
    path = check_file(name, path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{name}: {path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it "
                         "first, e.g. with iconv -f latin1 -t utf-8") from None
    except OSError as err:
        raise ValueError(f"{name}: {path} cannot be read ({err.strerror or err})") from None


def _no_constants(token: str):
    raise ValueError(token)


def parse_json(name: str, where: str, text: str, *, constants: bool = False):
    """One JSON value; NaN and Infinity (not JSON, though Python's parser takes them) are refused unless
    `constants` (for a reader that names a non-finite value better itself)."""
    try:
        return json.loads(text) if constants else json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: {where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") \
            from None
    except ValueError as err:  # parse_constant, or an integer too long to read
        raise ValueError(f"{name}: {where} is not valid JSON ({err})") from None


def read_json(name: str, path, expect: type | tuple = dict, what: str = "an object"):
    """A JSON file whose top level is of type `expect` (described as `what` in the error)."""
    path = check_file(name, path)
    value = parse_json(name, path, read_text(name, path))
    if not isinstance(value, expect):
        raise ValueError(f"{name}: {path} holds {json_kind(value)}, expected {what}")
    return value


def read_jsonl(name: str, path, keys: tuple[str, ...] = ()) -> list[dict]:
    """A JSONL file of objects, each with `keys`; blank lines skipped. Each object gets "_where"
    ("file line N") for the messages of later checks."""
    path = check_file(name, path)
    out = []
    for i, line in enumerate(read_text(name, path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {i}"
        obj = parse_json(name, where, line)
        if not isinstance(obj, dict) or not all(k in obj for k in keys):
            raise ValueError(f"{name}: {where}: expected an object with {', '.join(keys) or 'keys'}, "
                             f"got {json_kind(obj)}")
        obj["_where"] = where
        out.append(obj)
    if not out:
        raise ValueError(f"{name}: {path} has no lines")
    return out


def json_kind(value) -> str:
    """What a JSON value is, in the words of an error message."""
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def load_torch(name: str, path):
    """A torch file of tensors and plain containers, never code: a pickle that would build any other
    object (the way a crafted file runs code) is refused before it runs."""
    import pickle

    import torch

    path = check_file(name, path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        code = next((re.search(r"GLOBAL (\S+)", ln) for ln in lines if "GLOBAL" in ln), None)
        if code is not None:  # an object other than tensors and plain data: what a crafted pickle needs
            raise ValueError(f"{name}: {path} is refused: it holds more than tensors and plain data (it would call "
                             f"{code.group(1)}), and loading it could run code") from None
        raise ValueError(f"{name}: {path} cannot be read as a torch file (not a torch file, or damaged)") from None
    except Exception as err:  # truncated zip, not a torch file, ...
        why = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else ""
        raise ValueError(f"{name}: {path} cannot be read as a torch file ({type(err).__name__}: {why})") from None


def write_json(obj, path: str) -> None:
    """obj as indented JSON at path (its folder made where missing)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
