"""The contrast a direction is read from: pairs of (positive, negative) token sequences, each with the
positions whose residuals are rows.

Three ways in, each a JSONL path or the same records as a Python list:
  pos + neg   one {"text": ...} (or a plain string) per line; the i-th positive pairs with the i-th negative
  pairs       {"pos": ..., "neg": ...} per line, each a string or {"text", "span"}
  labeled     {"text": ..., "<label_key>": ...} per line, two classes; the k-th of one class pairs with
              the k-th of the other
Positions: "last" (each text's last token), "all" (every token a row) or "span" (records carry
"span": [start, end), characters; the tokens overlapping it). The PCA of paired differences needs one
negative per positive, so unequal counts are an error. Tokens are the tokenizer's, without special
tokens, as for probe target files.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from ..core.files import read_jsonl
from ..data.windows import tokenize
from ..data.prompts import token_offsets

POSITIONS = ("last", "all", "span")


@dataclass
class Item:
    ids: torch.Tensor  # [T] token ids
    select: torch.Tensor  # [T] bool: the positions whose residuals are rows
    where: str


def _records(name: str, source, keys: tuple[str, ...]) -> list:
    if isinstance(source, str):  # later messages name the argument too: "labeled: FILE line 3: ..."
        return [dict(r, _where=f"{name}: {r['_where']}") for r in read_jsonl(name, source, keys)]
    if not isinstance(source, (list, tuple)) or not source:
        raise ValueError(f"{name}: expected a JSONL path or a non-empty list of records")
    return [dict(r, _where=f"{name} record {i}") if isinstance(r, dict) else r for i, r in enumerate(source)]


def _item(tokenizer, rec, where: str, position: str) -> Item:
    """A string, or {"text", "span"?} → Item with the positions selected."""
    if isinstance(rec, str):
        rec = {"text": rec}
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not rec["text"].strip():
        raise ValueError(f"{where}: expected a non-empty text (a string or {{\"text\": ...}})")
    text, span = rec["text"], rec.get("span")
    if position == "span":
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) for v in span)
                and 0 <= span[0] < span[1] <= len(text)):
            raise ValueError(f"{where}: position 'span' needs \"span\": [start, end) within the text's "
                             f"{len(text)} characters, got {span!r}")
    elif span is not None:
        raise ValueError(f"{where}: has a \"span\" but position is {position!r} (use position 'span')")
    if tokenizer is None:  # read_pairs' check before a model loads
        return None
    if position == "span":
        ids, offsets = token_offsets(tokenizer, text, where)
        select = torch.tensor([s < span[1] and e > span[0] for s, e in offsets], dtype=torch.bool)
        if not bool(select.any()):
            raise ValueError(f"{where}: span [{span[0]}, {span[1]}) covers no token")
        return Item(ids, select, where)
    ids = tokenize(tokenizer, text)
    if ids.numel() == 0:
        raise ValueError(f"{where}: the text has no tokens")
    select = torch.ones(ids.numel(), dtype=torch.bool) if position == "all" else \
        torch.arange(ids.numel()) == ids.numel() - 1
    return Item(ids, select, where)


def _label(value, where: str, key: str) -> tuple:
    """A label's class key: its JSON type (boolean < number < string) and value, so true, 1 and "1" differ."""
    if isinstance(value, bool):
        return 0, value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return 1, value  # 1 and 1.0 are one JSON number
    if isinstance(value, str):
        return 2, value
    raise ValueError(f"{where}: \"{key}\" must be a string, a number or a boolean, got {value!r}")


def _named(positive, keys: list, by_key: dict) -> list:
    """The label keys `positive` names: a command-line text names a label by its JSON (1, true, "yes") or, for
    a string label, by its bare text; any other value by JSON type and value."""
    if not isinstance(positive, str):
        key = _label(positive, "positive", "positive")
        return [key] if key in keys else []
    return [k for k in keys if positive == json.dumps(by_key[k]) or (isinstance(by_key[k], str) and positive == by_key[k])]


def _where(rec, default: str) -> str:
    return rec.get("_where", default) if isinstance(rec, dict) else default


def read_pairs(tokenizer, *, pos=None, neg=None, pairs=None, labeled=None, label_key: str = "label",
               positive=None, position: str = "last") -> tuple[list[tuple[Item, Item]], dict]:
    """→ [(positive item, negative item)] and a description of the source (which class is positive).

    tokenizer=None checks everything but the tokens (files, JSON, labels, spans, counts), as the
    command line does before the model loads; the items are then None."""
    if position not in POSITIONS:
        raise ValueError(f"position: expected one of {POSITIONS}, got {position!r}")
    given = [n for n, v in (("pos/neg", pos if pos is not None else neg), ("pairs", pairs), ("labeled", labeled))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"inputs: give exactly one of pos + neg, pairs or labeled (got {given or 'none'})")
    info: dict = {"position": position}
    if pairs is not None:
        recs = _records("pairs", pairs, ("pos", "neg"))
        out = []
        for i, r in enumerate(recs):
            if not isinstance(r, dict) or "pos" not in r or "neg" not in r:
                raise ValueError(f"pairs: record {i}: expected {{\"pos\": ..., \"neg\": ...}}")
            w = _where(r, f"pairs record {i}")
            out.append((_item(tokenizer, r["pos"], f"{w} (pos)", position),
                        _item(tokenizer, r["neg"], f"{w} (neg)", position)))
        return out, {**info, "source": "pairs", "file": pairs if isinstance(pairs, str) else None}
    if labeled is not None:
        recs = _records("labeled", labeled, ("text", label_key))
        for i, r in enumerate(recs):
            if not isinstance(r, dict) or label_key not in r:
                raise ValueError(f"labeled: record {i}: expected a \"{label_key}\" field")
            _label(r[label_key], _where(r, f"labeled record {i}"), label_key)
        # labels are compared by JSON type and value: true and 1, or "1" and 1, are different classes
        by_key = {_label(r[label_key], "", label_key): r[label_key] for r in recs}
        keys = sorted(by_key)
        if len(keys) != 2:
            raise ValueError(f"labeled: expected two classes in \"{label_key}\", found {len(keys)}: "
                             f"{', '.join(json.dumps(by_key[k]) for k in keys)}")
        if positive is None:
            pos_key = keys[1]  # 0/1, false/true, neg/pos, negative/positive: the second in order
        else:
            named = _named(positive, keys, by_key)
            shown = ", ".join(json.dumps(by_key[k]) for k in keys)
            if not named:
                raise ValueError(f"positive: {positive!r} is not one of the labels {shown}")
            if len(named) > 1:  # "1" is the string label "1" and the JSON of the number 1
                raise ValueError(f"positive: {positive!r} names both labels {shown}; write the string one as JSON "
                                 f"({json.dumps(json.dumps(positive))})")
            pos_key = named[0]
        neg_key = keys[0] if keys[1] == pos_key else keys[1]
        positive, negative = by_key[pos_key], by_key[neg_key]
        pos = [r for r in recs if _label(r[label_key], "", label_key) == pos_key]
        neg = [r for r in recs if _label(r[label_key], "", label_key) == neg_key]
        names = (f"labeled ({label_key}={positive!r})", f"labeled ({label_key}={negative!r})")
        info.update(source="labeled", file=labeled if isinstance(labeled, str) else None,
                    positive=positive, negative=negative)
    else:
        if pos is None or neg is None:
            raise ValueError(f"{'neg' if pos is not None else 'pos'}: pos and neg come together")
        names = ("pos", "neg")
        info.update(source="pos/neg", file=[p if isinstance(p, str) else None for p in (pos, neg)])
        pos, neg = _records("pos", pos, ("text",)), _records("neg", neg, ("text",))
    if len(pos) != len(neg):
        raise ValueError(f"{names[1]}: {len(neg)} examples but {names[0]} has {len(pos)}: the PCA of paired "
                         "differences needs one negative per positive")
    return [(_item(tokenizer, p, _where(p, f"{names[0]} record {i}"), position),
             _item(tokenizer, q, _where(q, f"{names[1]} record {i}"), position))
            for i, (p, q) in enumerate(zip(pos, neg))], info


def split(n: int, heldout: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split of n pairs: (training indices, held-out indices), both sorted; a seeded
    permutation's first round(heldout · n) (at least 1 when heldout > 0) are held out."""
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or not 0 <= heldout < 1:
        raise ValueError(f"heldout: expected a fraction in [0, 1), got {heldout!r}")
    n_held = max(1, round(heldout * n)) if heldout > 0 else 0
    if n - n_held < 2:
        raise ValueError(f"heldout: {n} pair(s) leave {n - n_held} for training; need at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[n_held:]), sorted(perm[:n_held])
