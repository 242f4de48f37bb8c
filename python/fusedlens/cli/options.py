"""A command's config dataclass is its command line: flags, defaults, choices and help come from
the fields, so each default is written once.

Fields are declared with `core.fields.option`. Field metadata: `help` (required), `choices`, `positional`,
`flag` (another spelling than --field-name). Booleans become
switches: `--name` when the default is False, `--no-name` when it is True. A list field
is a repeatable flag (or a positional taking one or more values).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing


def _base_type(hint):
    """int | None -> int; list[str] -> (str, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return args[0], True
    if args:
        return _base_type(args[0])
    return hint, False


def add_arguments(parser: argparse.ArgumentParser, *configs: type) -> None:
    """Add one argument per field of each config dataclass."""
    for cls in configs:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            if "help" not in meta:
                continue  # not a command-line field
            typ, many = _base_type(hints[f.name])
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            name = "--" + f.name.replace("_", "-")
            help_text = meta["help"] + ("" if default in (None, False, True, [], dataclasses.MISSING)
                                        else f" (default {default})")
            if typ is bool:
                flag = meta.get("flag") or (f"--no-{f.name.replace('_', '-')}" if default else name)
                parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true",
                                    help=meta["help"])
                continue
            kw = {"type": typ, "help": help_text}
            if "choices" in meta:
                kw["choices"] = list(meta["choices"])
            if meta.get("positional"):
                parser.add_argument(f.name, nargs="+" if many else None, **kw)
                continue
            flag = meta.get("flag", name)
            if many:
                kw["action"] = "append"
                kw["default"] = None
            else:
                kw["default"] = default
            if "choices" not in kw:
                kw["metavar"] = f.name.upper()
            parser.add_argument(flag, dest=f.name, **kw)


def out_default(command: str) -> str:
    """Every command writes under fusedlens_out/<command> unless told otherwise."""
    return f"fusedlens_out/{command}"


def from_args(cls: type, args: argparse.Namespace, **override):
    """The config of `cls` filled from parsed arguments (fields the parser lacks keep their default)."""
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            if v is None and f.default_factory is not dataclasses.MISSING:
                continue  # a repeatable flag never given: the field's own default
            values[f.name] = v
    values.update(override)
    return cls(**values)


def parse_positions(name: str, spec: str) -> list[int]:
    """A command's list of token positions: "3", "1-4", "1,3,-1" (negative: from the end). A range must
    run forward ("5-2" selects nothing: an error, not an empty list); "-3--1" is the last three."""
    out = []
    for part in spec.split(","):
        try:
            a, sep, b = part.strip()[1:].partition("-")
            first = int(part.strip()[0] + a)
            last = int(b) if sep else first
        except (ValueError, IndexError):
            raise ValueError(f"{name}: expected positions like 3, 1-4 or 1,3,-1; got {spec!r}") from None
        if sep and last < first and (first >= 0) == (last >= 0):
            raise ValueError(f"{name}: the range {part.strip()!r} runs backwards and selects no position; "
                             f"write it as {last}-{first}")
        if sep and (first >= 0) != (last >= 0):
            raise ValueError(f"{name}: the range {part.strip()!r} mixes a position from the start with one from "
                             "the end; use positions of one kind")
        out += list(range(first, last + 1)) if sep else [first]
    return out
