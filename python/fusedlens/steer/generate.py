"""Generation with and without a steering vector, side by side (greedy, or sampled with one seed for both)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..core.models import LensModel
from ..intervene import generate as generate_with
from ..report.page import Viewable
from ..report.steer import generation_views
from .vectors import check_coef, check_vector, steer_edit


@dataclass
class SteerGeneration(Viewable):
    """`save_html(path)`: the two continuations side by side on a page."""

    prompt: str
    site: str
    coef: float
    unsteered: str
    steered: str
    unsteered_ids: list[int]
    steered_ids: list[int]
    meta: dict = field(default_factory=dict)

    html_title = "fusedlens: steering"

    def views(self, vocab) -> list[dict]:
        return generation_views(self)

    def to_dict(self) -> dict:
        return {"format": "fusedlens.SteerGeneration/1", **self.meta, "prompt": self.prompt, "site": self.site,
                "coef": self.coef, "unsteered": self.unsteered, "steered": self.steered,
                "unsteered_ids": self.unsteered_ids, "steered_ids": self.steered_ids}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str) -> str:
        from ..core.files import write_json

        write_json(self.to_dict(), path)
        return path


def prompt_ids(lm: LensModel, prompt) -> torch.Tensor:
    """A text (tokenized as the tokenizer does, special tokens included) or a 1-D tensor of ids."""
    if isinstance(prompt, torch.Tensor):
        ids = prompt.reshape(-1).long() if not prompt.is_floating_point() and prompt.dim() == 1 else None
    elif isinstance(prompt, str) and prompt.strip() and lm.tokenizer is not None:
        ids = torch.tensor(lm.tokenizer(prompt)["input_ids"], dtype=torch.long)
    else:
        ids = None
    if ids is None or ids.numel() == 0:
        raise ValueError("prompt: expected a non-empty text (with a tokenizer) or a 1-D tensor of token ids")
    if int(ids.min()) < 0 or int(ids.max()) >= lm.vocab_size:
        raise ValueError(f"prompt: token ids must be in [0, {lm.vocab_size})")
    return ids


def check_fits(vector: torch.Tensor, positions, length: int, name: str = "prompt") -> None:
    """The edit's positions must exist in a sequence of `length` tokens (a prompt, or an eval window)."""
    if vector.dim() == 2 and vector.shape[0] > length:
        raise ValueError(f"{name}: {length} token(s), fewer than the ActAdd vector's {vector.shape[0]} front "
                         "positions; use longer sequences or shorter plus/minus prompts")
    if positions is not None and any(not 0 <= int(p) < length for p in positions):
        raise ValueError(f"positions: {list(positions)} out of range for {length} token(s) ({name})")


def _decode(lm: LensModel, ids: torch.Tensor) -> str:
    return lm.tokenizer.decode(ids) if lm.tokenizer is not None else " ".join(str(int(i)) for i in ids)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def check_sampling(n_tokens, temperature, top_p) -> None:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens: expected a positive int, got {n_tokens!r}")
    if not (check_coef(temperature, "temperature") > 0 and 0 < check_coef(top_p, "top_p") <= 1):
        raise ValueError(f"temperature, top_p: expected temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


@torch.no_grad()
def generate(lm: LensModel, prompt, vector: torch.Tensor, site: str, coef: float, *, n_tokens: int = 30,
             positions=None, sample: bool = False, seed: int = 0, temperature: float = 1.0,
             top_p: float = 1.0) -> SteerGeneration:
    """The continuation of `prompt` without and with coef · vector added at `site`.

    vector: [d] (added at `positions` of the prompt, or with positions None at every position, the
    generated ones included) or an ActAdd block [n_front, d] (added at the prompt's first n_front
    positions). Greedy unless `sample`; sampled runs draw from generators with the same seed."""
    ids = prompt_ids(lm, prompt)
    v = check_vector(lm, vector)
    check_sampling(n_tokens, temperature, top_p)
    edit = steer_edit(lm, v, site, coef, positions=positions)
    check_fits(v, positions, ids.numel())
    if lm.context_length is not None and ids.numel() + n_tokens > lm.context_length:
        raise ValueError(f"n_tokens: {ids.numel()} prompt tokens + {n_tokens} generated exceed the model's context of "
                         f"{lm.context_length} tokens")
    kw = dict(temperature=temperature, top_p=top_p)
    plain = generate_with(lm, ids, [], n_tokens, sample=generator(seed) if sample else None, **kw)
    steered = generate_with(lm, ids, [edit], n_tokens, sample=generator(seed) if sample else None, **kw)
    text = prompt if isinstance(prompt, str) else _decode(lm, ids)
    meta = {"n_tokens": n_tokens, "positions": "front" if v.dim() == 2 else positions or "all",
            "sample": bool(sample), "seed": int(seed) if sample else None,
            "temperature": temperature if sample else None, "top_p": top_p if sample else None,
            "vector_norm": float(v.norm())}
    return SteerGeneration(text, site, float(coef), _decode(lm, plain), _decode(lm, steered), plain.tolist(),
                           steered.tolist(), meta)
