"""Per-token probe targets from a file: the sequences (texts) and a value per token.

JSONL, one sequence per line (keys may be combined):
  {"text": ..., "targets": {"name": [one value per token, or null]}}
  {"text": ..., "spans": [{"char_start": a, "char_end": b, "name": ..., "value": ...}]}
      the value goes on every token overlapping characters [a, b)
  {"text": ..., "label": "red"}   a value of the whole sequence, on every token of it
Parquet: columns sequence, position, name, value, with the texts from a JSONL of {"text"} lines.

Tokens are the model tokenizer's, without special tokens. A numeric value is a
regression target; a string makes its target categorical (one ridge column per
class). null or absent: that token is no row for that target.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from ..data.windows import tokenize


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


class _Builder:
    """Collects raw per-token values (numbers or strings) per name, then encodes them."""

    def __init__(self, source: str):
        self.source, self.raw, self.sequences = source, {}, []

    def add_sequence(self, ids: torch.Tensor) -> int:
        self.sequences.append(ids)
        return len(self.sequences) - 1

    def put(self, where: str, name, seq: int, pos: int, value) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: a target name must be a non-empty string, got {name!r}")
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: target {name!r}: expected a number, a string (a class) or null, "
                             f"got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: target {name!r} has a non-finite value {value!r}")
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
            kinds = {isinstance(v, str) for v in cells.values()}
            if len(kinds) > 1:
                raise ValueError(f"{self.source}: target {name!r} mixes numbers and strings (classes)")
            cols = [torch.full((s.numel(),), float("nan"), dtype=torch.float64) for s in self.sequences]
            if kinds == {True}:
                classes[name] = sorted(set(cells.values()))
                index = {c: i for i, c in enumerate(classes[name])}
                for (seq, pos), v in cells.items():
                    cols[seq][pos] = index[v]
            else:
                for (seq, pos), v in cells.items():
                    cols[seq][pos] = float(v)
            values[name] = cols
        return TargetFile(self.sequences, values, classes, self.source)


def token_offsets(tokenizer, text: str, where: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: spans need a tokenizer with character offsets (a fast tokenizer): {e}") from None
    return torch.tensor(enc["input_ids"], dtype=torch.long), [tuple(o) for o in enc["offset_mapping"]]


def _read_jsonl_line(builder: _Builder, tokenizer, line: str, where: str) -> None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"]:
        raise ValueError(f"{where}: expected an object with a non-empty \"text\"")
    unknown = set(obj) - {"text", "targets", "spans", "label"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected text, targets, spans, label")
    spans = obj.get("spans") or []
    if spans:
        ids, offsets = token_offsets(tokenizer, obj["text"], where)
    else:
        ids, offsets = tokenize(tokenizer, obj["text"]), None
    n = int(ids.numel())
    if n == 0:
        raise ValueError(f"{where}: the text has no tokens")
    seq = builder.add_sequence(ids)
    targets = obj.get("targets") or {}
    if not isinstance(targets, dict):
        raise ValueError(f"{where}: \"targets\" must map names to lists of per-token values")
    for name, vals in targets.items():
        if not isinstance(vals, list) or len(vals) != n:
            got = len(vals) if isinstance(vals, list) else type(vals).__name__
            raise ValueError(f"{where}: target {name!r} has {got} values, the text has {n} tokens")
        for pos, v in enumerate(vals):
            builder.put(where, name, seq, pos, v)
    if not isinstance(spans, list):
        raise ValueError(f"{where}: \"spans\" must be a list")
    for span in spans:
        if not isinstance(span, dict) or not {"char_start", "char_end", "name", "value"} <= set(span):
            raise ValueError(f"{where}: a span needs char_start, char_end, name and value, got {span!r}")
        a, b = span["char_start"], span["char_end"]
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(obj["text"])):
            raise ValueError(f"{where}: span [{a}, {b}) is not a non-empty range of the text's "
                             f"{len(obj['text'])} characters")
        covered = [p for p, (s, e) in enumerate(offsets) if s < b and e > a]
        if not covered:
            raise ValueError(f"{where}: span [{a}, {b}) of {span['name']!r} covers no token")
        for pos in covered:
            builder.put(where, span["name"], seq, pos, span["value"])
    if "label" in obj:
        for pos in range(n):
            builder.put(where, "label", seq, pos, obj["label"])


def read_target_file(path: str, tokenizer, texts: str | None = None) -> TargetFile:
    """A JSONL target file, or a Parquet one (sequence, position, name, value) with `texts`: a JSONL of {"text"}."""
    if tokenizer is None:
        raise ValueError("targets file: needs a model with a tokenizer")
    if path.endswith(".parquet"):
        if texts is None:
            raise ValueError(f"{path}: a Parquet target file needs the texts (a JSONL of {{\"text\"}} lines)")
        return _read_parquet(path, tokenizer, texts)
    builder = _Builder(path)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                _read_jsonl_line(builder, tokenizer, line, f"{path} line {i}")
    return builder.build()


def _read_parquet(path: str, tokenizer, texts: str) -> TargetFile:
    import pyarrow.parquet as pq

    builder = _Builder(path)
    with open(texts, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                where = f"{texts} line {i}"
                try:
                    text = json.loads(line).get("text")
                except (json.JSONDecodeError, AttributeError):
                    text = None
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{where}: expected an object with a non-empty \"text\"")
                builder.add_sequence(tokenize(tokenizer, text))
    table = pq.read_table(path).to_pylist()
    if table and not {"sequence", "position", "name", "value"} <= set(table[0]):
        raise ValueError(f"{path}: expected columns sequence, position, name, value, got {sorted(table[0])}")
    for i, row in enumerate(table):
        where = f"{path} row {i}"
        seq, pos = row["sequence"], row["position"]
        if not isinstance(seq, int) or not 0 <= seq < len(builder.sequences):
            raise ValueError(f"{where}: sequence {seq!r} is not one of the {len(builder.sequences)} texts")
        n = int(builder.sequences[seq].numel())
        if not isinstance(pos, int) or not 0 <= pos < n:
            raise ValueError(f"{where}: position {pos!r} is outside sequence {seq}'s {n} tokens")
        builder.put(where, row["name"], seq, pos, row["value"])
    return builder.build()
