"""Token classes for depth to the correct answer by class (seed 002: function words are predicted right
earliest): a class id per vocabulary entry from a built-in English function-word list, a JSON file
{token string or id: class}, a dict, or a callable token string → class (None: no class)."""
from __future__ import annotations

import json
import warnings

import torch

# English function words: articles, determiners, pronouns, prepositions, conjunctions, auxiliaries.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no all both either neither
i me my mine myself you your yours yourself he him his himself she her hers herself it its itself
we us our ours ourselves they them their theirs themselves who whom whose which what
of in on at by for with about against between into through during before after above below to from
up down out off over under again further then once than as like near since until upon within without
and but or nor so yet if because although though while whereas unless whether
be am is are was were been being have has had having do does did doing
will would shall should can could may might must not
there here when where why how very just too also only
""".split())


def function_word_classes(tokenizer, vocab_size: int) -> tuple[torch.Tensor, list[str]]:
    """Class 0 'function word' for every token whose text (stripped, lower case) is one, 1 'other'."""
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    out = torch.tensor([0 if t.strip().lower() in FUNCTION_WORDS else 1 for t in texts], dtype=torch.long)
    return out, ["function word", "other"]


def class_map(spec, tokenizer, vocab_size: int) -> tuple[torch.Tensor, list[str]]:
    """spec: 'function_words', a JSON path, a dict {token string or id: class}, or a callable
    token string → class or None. Returns class ids [vocab] (-1: no class) and the class names.
    Entries naming no token of the vocabulary are counted and warned about, never fatal."""
    if spec == "function_words":
        if tokenizer is None:
            raise ValueError("classes: the function-word list needs a model with a tokenizer")
        return function_word_classes(tokenizer, vocab_size)
    if isinstance(spec, str):
        with open(spec) as f:
            spec = json.load(f)
        if not isinstance(spec, dict):
            raise ValueError("classes: a class-map JSON must be an object {token or id: class}")
    out = torch.full((vocab_size,), -1, dtype=torch.long)
    names: list[str] = []

    def cls(name) -> int:
        name = str(name)
        if name not in names:
            names.append(name)
        return names.index(name)

    if callable(spec):
        if tokenizer is None:
            raise ValueError("classes: a callable class map needs a model with a tokenizer")
        for i in range(vocab_size):
            c = spec(tokenizer.decode([i]))
            if c is not None:
                out[i] = cls(c)
        return out, names
    if not isinstance(spec, dict):
        raise ValueError(f"classes: expected 'function_words', a JSON path, a dict or a callable, got {spec!r}")
    unknown = 0
    for key, c in spec.items():
        i = None
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit() and tokenizer is None):
            i = int(key)
        elif tokenizer is not None:
            ids = tokenizer.convert_tokens_to_ids([key])
            i = ids[0] if ids and ids[0] is not None and ids[0] != tokenizer.unk_token_id else None
        if i is None or not 0 <= i < vocab_size:
            unknown += 1
            continue
        out[i] = cls(c)
    if unknown:
        warnings.warn(f"classes: {unknown} of {len(spec)} entries name no token of the vocabulary; skipped")
    if not names:
        raise ValueError("classes: the class map names no token of the vocabulary")
    return out, names
