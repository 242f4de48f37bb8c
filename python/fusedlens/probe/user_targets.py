"""Per-token probe targets from a file: the sequences (texts) and a value per token.

JSONL, one sequence per line (keys may be combined):
  {"text": ..., "targets": {"name": [one value per token, or null]}}
  {"text": ..., "spans": [{"char_start": a, "char_end": b, "name": ..., "value": ...}]}
      the value goes on every token overlapping characters [a, b)
  {"text": ..., "label": "red"}   a value of the whole sequence, on every token of it
Parquet: columns sequence, position, name, value, with the texts from a JSONL of {"text"} lines.

Tokens are the model tokenizer's, without special tokens. A numeric value is a
regression target; a string makes its target categorical (one ridge column per
class; at least two classes). null or absent: that token is no row for that target.
A name may not be one of the built-in targets (probe.targets.TARGETS).

Reading is two steps: `parse_target_file` checks everything that needs no tokenizer (files,
JSON, names, values, kinds, classes) before any model loads; `read_target_file` aligns the
values to the tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..core.files import check_file, parse_json, read_jsonl, read_text
from ..data.prompts import token_offsets
from ..data.windows import tokenize
from .targets import TARGETS

NAME = "targets_file"


@dataclass
class TargetFile:
    """sequences: token ids per sequence; values: name → per sequence a float tensor (NaN: no value;
    categorical targets hold the class index); classes: categorical name → its class names."""

    sequences: list[torch.Tensor]
    values: dict[str, list[torch.Tensor]]
    classes: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    @property
    def names(self) -> list[str]:
        return list(self.values)

    def n_tokens(self) -> int:
        return sum(int(s.numel()) for s in self.sequences)


def _check_value(where: str, name, value) -> None:
    """One target value as read: a target name that is no built-in, and a finite number, a string or null."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: a target name must be a non-empty string, got {name!r}")
    if name in TARGETS:
        raise ValueError(f"{where}: target name {name!r} is a built-in target of probe ({', '.join(TARGETS)}); "
                         "rename it")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: target {name!r}: expected a number, a string (a class) or null, got {value!r}")
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{where}: target {name!r} has a value too large for a number "
                             f"({str(value)[:12]}... of {len(str(value))} digits)") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: target {name!r} has a non-finite value {value!r}")


def _classes(source: str, name: str, values) -> list[str] | None:
    """The sorted classes of a categorical target, None for a numeric one; mixed or one-class targets are errors."""
    kinds = {isinstance(v, str) for v in values}
    if len(kinds) > 1:
        raise ValueError(f"{source}: target {name!r} mixes numbers and strings (classes)")
    if kinds != {True}:
        return None
    classes = sorted(set(values))
    if len(classes) < 2:
        raise ValueError(f"{source}: target {name!r} has one class ({classes[0]!r}); a class target needs at "
                         "least two")
    return classes


class _Builder:
    """Collects raw per-token values (numbers or strings) per name, then encodes them."""

    def __init__(self, source: str):
        self.source, self.raw, self.sequences = source, {}, []

    def add_sequence(self, ids: torch.Tensor) -> int:
        self.sequences.append(ids)
        return len(self.sequences) - 1

    def put(self, where: str, name, seq: int, pos: int, value) -> None:
        _check_value(where, name, value)
        if value is None:
            return
        per_name = self.raw.setdefault(name, {})
        old = per_name.get((seq, pos))
        if old is not None and old != value:
            raise ValueError(f"{where}: target {name!r} gets two values ({old!r}, {value!r}) on token {pos}")
        per_name[(seq, pos)] = value

    def build(self) -> TargetFile:
        if not self.sequences:
            raise ValueError(f"{self.source}: no sequences")
        if not self.raw:
            raise ValueError(f"{self.source}: no target values")
        values, classes = {}, {}
        for name, cells in self.raw.items():
            cols = [torch.full((s.numel(),), float("nan"), dtype=torch.float64) for s in self.sequences]
            names = _classes(self.source, name, cells.values())
            if names is not None:
                classes[name] = names
                index = {c: i for i, c in enumerate(names)}
                for (seq, pos), v in cells.items():
                    cols[seq][pos] = index[v]
            else:
                for (seq, pos), v in cells.items():
                    cols[seq][pos] = float(v)
            values[name] = cols
        return TargetFile(self.sequences, values, classes, self.source)


def _check_line(obj, where: str) -> None:
    """One JSONL object's shape and values (everything but its alignment to tokens)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"]:
        raise ValueError(f"{where}: expected an object with a non-empty \"text\"")
    unknown = set(obj) - {"text", "targets", "spans", "label"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected text, targets, spans, label")
    targets = obj.get("targets") or {}
    if not isinstance(targets, dict):
        raise ValueError(f"{where}: \"targets\" must map names to lists of per-token values")
    for name, vals in targets.items():
        if not isinstance(vals, list):
            raise ValueError(f"{where}: target {name!r} must be a list of per-token values, got "
                             f"{type(vals).__name__}")
        for v in vals:
            _check_value(where, name, v)
    spans = obj.get("spans") or []
    if not isinstance(spans, list):
        raise ValueError(f"{where}: \"spans\" must be a list")
    for span in spans:
        if not isinstance(span, dict) or not {"char_start", "char_end", "name", "value"} <= set(span):
            raise ValueError(f"{where}: a span needs char_start, char_end, name and value, got {span!r}")
        a, b = span["char_start"], span["char_end"]
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(obj["text"])):
            raise ValueError(f"{where}: span [{a}, {b}) is not a non-empty range of the text's "
                             f"{len(obj['text'])} characters")
        _check_value(where, span["name"], span["value"])
    if "label" in obj:
        _check_value(where, "label", obj["label"])


def _values_by_name(lines) -> dict:
    out: dict = {}
    for _, obj in lines:
        for name, vals in (obj.get("targets") or {}).items():
            out.setdefault(name, []).extend(v for v in vals if v is not None)
        for span in obj.get("spans") or []:
            if span["value"] is not None:
                out.setdefault(span["name"], []).append(span["value"])
        if obj.get("label") is not None:
            out.setdefault("label", []).append(obj["label"])
    return out


@dataclass
class ParsedTargets:
    """A target file read and checked without a tokenizer (parse_target_file)."""

    path: str
    lines: list = field(default_factory=list)   # JSONL: (where, object)
    texts: list = field(default_factory=list)   # Parquet: (where, text) of the texts file
    rows: list = field(default_factory=list)    # Parquet: the table's rows


def parse_target_file(path: str, texts: str | None = None, name: str = NAME) -> ParsedTargets:
    """Read and check a target file (and a Parquet one's texts) before any model loads; every error
    starts with `name`."""
    try:
        return _parse(path, texts, name)
    except ValueError as err:
        if str(err).startswith(("texts:", f"{name}:")):
            raise
        raise ValueError(f"{name}: {err}") from None


def _parse(path: str, texts: str | None, name: str) -> ParsedTargets:
    check_file(name, path)
    if path.endswith(".parquet"):
        if texts is None:
            raise ValueError(f"{name}: {path}: a Parquet target file needs the texts (--texts: a JSONL of "
                             "{\"text\"} lines)")
        return _parse_parquet(path, texts, name)
    if texts is not None:
        raise ValueError("texts: only for a Parquet targets file (a JSONL one holds its texts)")
    parsed = ParsedTargets(path)
    for i, line in enumerate(read_text(name, path).splitlines(), 1):
        if line.strip():
            where = f"{path} line {i}"
            obj = parse_json(name, where, line, constants=True)
            _check_line(obj, where)
            parsed.lines.append((where, obj))
    if not parsed.lines:
        raise ValueError(f"{name}: {path}: no sequences")
    values = _values_by_name(parsed.lines)
    if not values:
        raise ValueError(f"{name}: {path}: no target values")
    for target, vals in values.items():
        _classes(path, target, vals)
    return parsed


def _parse_parquet(path: str, texts: str, name: str) -> ParsedTargets:
    import pyarrow.parquet as pq

    parsed = ParsedTargets(path)
    for obj in read_jsonl("texts", texts, ("text",)):
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise ValueError(f"texts: {obj['_where']}: expected an object with a non-empty \"text\"")
        parsed.texts.append((obj["_where"], obj["text"]))
    try:
        parsed.rows = pq.read_table(path).to_pylist()
    except Exception as err:  # not Parquet, damaged, unreadable types: one line naming the file
        raise ValueError(f"{name}: {path} cannot be read as Parquet ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
    if parsed.rows and not {"sequence", "position", "name", "value"} <= set(parsed.rows[0]):
        raise ValueError(f"{name}: {path}: expected columns sequence, position, name, value, got "
                         f"{sorted(parsed.rows[0])}")
    values: dict = {}
    for i, row in enumerate(parsed.rows):
        where = f"{path} row {i}"
        seq, pos = row["sequence"], row["position"]
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < len(parsed.texts):
            raise ValueError(f"{where}: sequence {seq!r} is not one of the {len(parsed.texts)} texts")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise ValueError(f"{where}: position {pos!r} is not a token position")
        _check_value(where, row["name"], row["value"])
        if row["value"] is not None:
            values.setdefault(row["name"], []).append(row["value"])
    for target, vals in values.items():
        _classes(path, target, vals)
    return parsed


def _read_line(builder: _Builder, tokenizer, obj: dict, where: str) -> None:
    spans = obj.get("spans") or []
    if spans:
        ids, offsets = token_offsets(tokenizer, obj["text"], where)
    else:
        ids, offsets = tokenize(tokenizer, obj["text"]), None
    n = int(ids.numel())
    if n == 0:
        raise ValueError(f"{where}: the text has no tokens")
    seq = builder.add_sequence(ids)
    for name, vals in (obj.get("targets") or {}).items():
        if len(vals) != n:
            raise ValueError(f"{where}: target {name!r} has {len(vals)} values, the text has {n} tokens")
        for pos, v in enumerate(vals):
            builder.put(where, name, seq, pos, v)
    for span in spans:
        a, b = span["char_start"], span["char_end"]
        covered = [p for p, (s, e) in enumerate(offsets) if s < b and e > a]
        if not covered:
            raise ValueError(f"{where}: span [{a}, {b}) of {span['name']!r} covers no token")
        for pos in covered:
            builder.put(where, span["name"], seq, pos, span["value"])
    if "label" in obj:
        for pos in range(n):
            builder.put(where, "label", seq, pos, obj["label"])


def read_target_file(path, tokenizer, texts: str | None = None) -> TargetFile:
    """A JSONL target file, or a Parquet one (sequence, position, name, value) with `texts`: a JSONL of
    {"text"}; `path` may be what parse_target_file returned (then `texts` is not needed again)."""
    if tokenizer is None:
        raise ValueError(f"{NAME}: needs a model with a tokenizer")
    parsed = path if isinstance(path, ParsedTargets) else parse_target_file(path, texts)
    builder = _Builder(parsed.path)
    for where, obj in parsed.lines:
        _read_line(builder, tokenizer, obj, where)
    for _, text in parsed.texts:
        builder.add_sequence(tokenize(tokenizer, text))
    for i, row in enumerate(parsed.rows):
        where = f"{parsed.path} row {i}"
        seq, pos = row["sequence"], row["position"]
        n = int(builder.sequences[seq].numel())
        if not pos < n:
            raise ValueError(f"{where}: position {pos!r} is outside sequence {seq}'s {n} tokens")
        builder.put(where, row["name"], seq, pos, row["value"])
    return builder.build()
