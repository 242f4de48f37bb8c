"""Token classes for depth to the correct answer by class (Gupta et al. 2025: function words are predicted right
earliest): a class id per vocabulary entry from a built-in English function-word list, a JSON file
{token: class}, a dict, or a callable token string → class (None: no class).

A key names a token one way only: "id:5" is token id 5 (an int key in a dict too); any other key is a
token string as the vocabulary spells it ("5" is the token "5", "Ġthe" SmolLM2's " the"). JSON keys
are always strings, so the prefix is what tells an id from a token that is a number."""
from __future__ import annotations

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


ID_PREFIX = "id:"


def read_class_map(path: str, name: str = "classes") -> dict:
    """A class-map JSON {token string or "id:N": class name}, checked for shape before any model loads."""
    from ..core.files import read_json

    spec = read_json(name, path, dict, 'an object {"token" or "id:N": "class"}')
    if not spec:
        raise ValueError(f"{name}: {path} maps no token to a class")
    for key, c in spec.items():
        if not isinstance(c, (str, int)) or isinstance(c, bool) or c == "":
            raise ValueError(f"{name}: {path}: the class of {key!r} must be a name (a string), got {c!r}")
        if key.startswith(ID_PREFIX) and not (key[3:].isascii() and key[3:].isdigit()):
            raise ValueError(f"{name}: {path}: {key!r} is not a token id (write id:5 for id 5)")
    if len({str(c) for c in spec.values()}) < 2:
        raise ValueError(f"{name}: {path} names one class; depth by class needs at least two")
    return spec


def _token_id(key, tokenizer) -> int | None:
    """The id a class-map key names (module docstring), None if it names no token."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if not isinstance(key, str):
        raise ValueError(f"classes: a key must be a token string or 'id:N', got {key!r}")
    if key.startswith(ID_PREFIX):
        if not (key[3:].isascii() and key[3:].isdigit()):
            raise ValueError(f"classes: {key!r} is not a token id (write id:5 for id 5)")
        return int(key[3:])
    if tokenizer is None:
        raise ValueError(f"classes: the token {key!r} needs a model with a tokenizer (or write ids as id:N)")
    ids = tokenizer.convert_tokens_to_ids([key])
    return ids[0] if ids and ids[0] is not None and ids[0] != tokenizer.unk_token_id else None


def class_map(spec, tokenizer, vocab_size: int) -> tuple[torch.Tensor, list[str]]:
    """spec: 'function_words', a JSON path, a dict {token: class} (keys as in the module docstring), or a
    callable token string → class or None. Returns class ids [vocab] (-1: no class) and the class names.
    Entries naming no token of the vocabulary are counted and warned about, never fatal."""
    if spec == "function_words":
        if tokenizer is None:
            raise ValueError("classes: the function-word list needs a model with a tokenizer")
        return function_word_classes(tokenizer, vocab_size)
    if isinstance(spec, str):
        spec = read_class_map(spec)
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
        i = _token_id(key, tokenizer)
        if i is None or not 0 <= i < vocab_size:
            unknown += 1
            continue
        out[i] = cls(c)
    if unknown:
        warnings.warn(f"classes: {unknown} of {len(spec)} entries name no token of the vocabulary; skipped")
    if not names:
        raise ValueError("classes: the class map names no token of the vocabulary")
    if len(names) < 2:
        raise ValueError(f"classes: every token is in one class ({names[0]!r}); depth by class needs at least two")
    return out, names
