"""Patchscopes (Ghandeharioun et al. 2024): (S, i, M, ℓ) → (T, i*, f, M*, ℓ*).

The hidden state of source prompt S at position i after layer ℓ of model M is mapped by f
(identity by default; an affine map for a model of another width) and written into target prompt
T at position i* after layer ℓ* of M* (M by default); M* then continues greedily for n tokens with
the patch kept at i* on every step (no KV cache: each step reruns the patched prompt). Read out:
the generated text per source layer, and the fused lens statistics of the patched position at
every layer of the target run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import ops
from ..core.capture import ResidualCapture, capture_residuals
from ..core.models import LensModel
from ..report.page import Viewable
from ..report.patch import patchscope_views
from .hooks import Edit, Intervention

# The paper's prompts: few-shot copies (token identity) and few-shot descriptions (entity
# resolution); the patched position is the "?" placeholder, and the model continues after it.
IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n? ->"
DESCRIPTION_PROMPT = ("Syria: Country in the Middle East\nLeonardo DiCaprio: American actor\n"
                      "Samsung: South Korean multinational corporation\n?:")
TARGETS = {"identity": IDENTITY_PROMPT, "description": DESCRIPTION_PROMPT}


@dataclass
class PatchscopeResult(Viewable):
    """Per source layer: the target run's generation and its lens top-1 at the patched position at every
    target layer (`save_html` / a notebook: the table and the layer × layer grid of top-1 tokens)."""

    source_layers: list[int]
    target_layers: list[int]
    source_token: str
    generations: list[str]          # one per source layer
    lens_top1: list[list[str]]      # per source layer: the target's top-1 at the patched position, per target site
    meta: dict = field(default_factory=dict)

    html_title = "fusedlens: patchscope"

    def views(self, vocab) -> list[dict]:
        return patchscope_views(self, vocab)

    def to_dict(self) -> dict:
        return {"format": "fusedlens.PatchscopeResult/1", **self.meta, "source_layers": self.source_layers,
                "target_layers": self.target_layers, "source_token": self.source_token,
                "generations": self.generations, "lens_top1": self.lens_top1}


@torch.no_grad()
def generate(lm: LensModel, ids: torch.Tensor, edits: list[Edit], n: int, *, at: str = "prompt",
             sample: torch.Generator | None = None, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Continuation [n] of ids [T] under `edits`, the whole sequence rerun each step (no KV cache);
    ids [B, T] (rows of equal length, e.g. one row per edit) give [B, n] in one forward per step.

    at: "prompt" applies each edit at its own positions (in the prompt) on every step; "new" applies it
    at every generated position instead (the tokens after the prompt), whatever its positions say.
    sample: None is greedy (argmax); a torch.Generator draws each token from softmax(logits / temperature)
    cut to the top_p nucleus (the smallest set of most likely tokens whose probability reaches top_p)."""
    if at not in ("prompt", "new"):
        raise ValueError(f"at: expected 'prompt' or 'new', got {at!r}")
    if sample is not None and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"temperature, top_p: expected temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    seq = ids[None] if ids.dim() == 1 else ids
    prompt_len = seq.shape[1]
    for _ in range(n):
        step = edits if at == "prompt" else [dataclasses.replace(e, positions=list(range(prompt_len, seq.shape[1])))
                                             for e in edits if seq.shape[1] > prompt_len]
        with Intervention(lm, step):
            logits = lm.model(input_ids=seq.to(lm.device), use_cache=False).logits[:, -1]
        nxt = logits.argmax(-1) if sample is None else _draw(logits.cpu(), sample, temperature, top_p)
        seq = torch.cat([seq, nxt.reshape(-1, 1).cpu()], 1)
    return seq[:, prompt_len:] if ids.dim() == 2 else seq[0, prompt_len:]


def _draw(logits: torch.Tensor, gen: torch.Generator, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row [B, vocab], sampled in float64 from the tempered, nucleus-cut distribution."""
    p = torch.softmax(logits.double() / temperature, -1)
    sorted_p, order = p.sort(-1, descending=True)
    if top_p < 1:  # (at 1 nothing is cut, whatever the rounding of the cumulative sum)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # tokens before which the nucleus was not yet full
        sorted_p = sorted_p * keep
    pick = torch.multinomial(sorted_p, 1, generator=gen)
    return order.gather(-1, pick)[:, 0]


def _position(name: str, pos: int, length: int) -> int:
    if isinstance(pos, bool) or not isinstance(pos, int) or not -length <= pos < length:
        raise ValueError(f"{name}: position {pos!r} out of range for {length} tokens")
    return pos % length


@torch.no_grad()
def patchscope(lm: LensModel, source: str, *, source_position: int = -1, layers=None, target: str = "identity",
               target_position: int | None = None, target_layer: int | None = None, target_lm: LensModel | None = None,
               mapping=None, n_tokens: int = 10, progress: bool = False) -> PatchscopeResult:
    """For each source layer ℓ (default all): the target continuation with S's residual resid.ℓ at
    source_position written into T's resid.ℓ* at target_position (ℓ* = ℓ unless target_layer).

    target: "identity", "description" (TARGETS) or a prompt; target_position: default the last
    token that is a "?" placeholder (a prompt without one needs an explicit target_position).
    The target prompt plus the n_tokens generated must fit M*'s context.

    target_lm: M* (default lm); its width must match unless `mapping` (a callable, or a [d*, d] matrix,
    or a (matrix, bias) pair) maps M's residual into M*'s."""
    target_lm = target_lm or lm
    if lm.tokenizer is None or target_lm.tokenizer is None:
        raise ValueError("patchscope: prompts need tokenizers")
    if isinstance(mapping, torch.Tensor):
        mapping = (mapping, None)
    if isinstance(mapping, tuple):
        matrix, bias = mapping
        if matrix.shape != (target_lm.d_model, lm.d_model):
            raise ValueError(f"mapping: expected a [{target_lm.d_model}, {lm.d_model}] matrix, got {tuple(matrix.shape)}")
        mapping = (lambda h, m=matrix, b=bias: h @ m.T.to(h.dtype) + (0 if b is None else b.to(h.dtype)))
    if mapping is None and target_lm.d_model != lm.d_model:
        raise ValueError(f"mapping: the source model's width {lm.d_model} differs from the target's "
                         f"{target_lm.d_model}; give a mapping (a matrix or a function)")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens: expected a positive int, got {n_tokens!r}")
    target = TARGETS.get(target, target)
    if not isinstance(source, str) or not source.strip() or not isinstance(target, str) or not target.strip():
        raise ValueError("source, target: expected non-empty texts")
    src = torch.tensor(lm.tokenizer(source)["input_ids"])
    tgt = torch.tensor(target_lm.tokenizer(target)["input_ids"])
    if target_position is None:
        marks = [p for p in range(tgt.numel()) if target_lm.tokenizer.decode([int(tgt[p])]).strip() == "?"]
        if not marks:
            raise ValueError("target: the target prompt has no '?' placeholder token; put a '?' where the state is "
                             "written, or give a target position (--target-position)")
        target_position = marks[-1]
    for name, ids, model, extra in (("source", src, lm, 0), ("target", tgt, target_lm, n_tokens)):
        context = model.context_length
        if context is not None and ids.numel() + extra > context:
            raise ValueError(f"{'n_tokens' if extra else name}: {ids.numel()} {name} tokens"
                             + (f" + {extra} generated" if extra else "")
                             + f" exceed the model's context of {context} tokens")
    i, j = _position("source_position", source_position, src.numel()), _position("target_position", target_position,
                                                                                  tgt.numel())
    layers = list(range(lm.n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < lm.n_layers]
    if bad or not layers:
        raise ValueError(f"layers: expected source layers in [0, {lm.n_layers}), got {layers}")
    if target_layer is not None and not 0 <= int(target_layer) < target_lm.n_layers:
        raise ValueError(f"target_layer: expected in [0, {target_lm.n_layers}), got {target_layer}")
    res = capture_residuals(lm, src[None], embed=False)
    targets_l = [int(target_layer) if target_layer is not None else min(x, target_lm.n_layers - 1) for x in layers]
    gens, tops = [], []
    capture = ResidualCapture(target_lm, embed=False)
    for layer, t_layer in tqdm(list(zip(layers, targets_l)), desc="patchscope", disable=not progress):
        h = res.hidden[layer, i]
        h = h if mapping is None else mapping(h)
        edit = Edit(f"resid.{t_layer}", "replace", h, positions=[j])
        out = generate(target_lm, tgt, [edit], n_tokens)
        gens.append(target_lm.tokenizer.decode(out))
        with Intervention(target_lm, [edit]):
            patched = capture.run(tgt[None])
        stats = ops.lens_stats(patched.hidden[:, j:j + 1], target_lm.norm, target_lm.unembed, None, 1)
        tops.append([target_lm.tokenizer.decode([int(t)]) for t in stats.topk_ids[:, 0, 0]])
    return PatchscopeResult(layers, targets_l, lm.tokenizer.decode([int(src[i])]), gens, tops,
                            meta={"source": source, "source_position": i, "target": target, "target_position": j,
                                  "n_tokens": n_tokens})
