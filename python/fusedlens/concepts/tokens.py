"""Concept words as single token ids. The space-prefixed form (" king": how a word appears inside English
text for BPE vocabularies) is tried first; the bare form ("king") where the space one is not a single
token. Both words of a pair take the same form, so the space itself never differs within a pair. A pair
that fits no form is skipped and counted, never an error."""
from __future__ import annotations

from dataclasses import dataclass

FORMS = ("auto", "space", "bare")


@dataclass(frozen=True)
class TokenPair:
    concept: str
    x: str
    y: str
    x_id: int
    y_id: int
    form: str  # "space" or "bare"


def single_token(tokenizer, text: str) -> int | None:
    """The one token id of `text` (no special tokens), or None where it takes more (or fewer) than one."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


def token_pairs(tokenizer, lists: dict, form: str = "auto") -> tuple[list[TokenPair], list[dict]]:
    """Every usable pair, in concept order, and the skipped ones ({concept, x, y, reason})."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {', '.join(FORMS)}, got {form!r}")
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        raise ValueError("tokenizer: concept words need the model's tokenizer (the LensModel has none)")
    order = {"auto": ("space", "bare"), "space": ("space",), "bare": ("bare",)}[form]
    used, skipped = [], []
    for concept, pairs in lists.items():
        for x, y in pairs:
            for f in order:
                pre = " " if f == "space" else ""
                ix, iy = single_token(tokenizer, pre + x), single_token(tokenizer, pre + y)
                if ix is not None and iy is not None:
                    if ix == iy:
                        skipped.append({"concept": concept, "x": x, "y": y, "reason": "the same token"})
                    else:
                        used.append(TokenPair(concept, x, y, ix, iy, f))
                    break
            else:
                multi = [w for w in (x, y) if all(single_token(tokenizer, (" " if f == "space" else "") + w) is None
                                                  for f in order)]
                skipped.append({"concept": concept, "x": x, "y": y,
                                "reason": "not one token: " + ", ".join(multi) if multi
                                else "no form makes both words one token"})
    return used, skipped
