"""`direct_logit_attribution()`: direct logit attribution of a batch of prompts, every component, chosen tokens and the full vocabulary.

One forward per batch (right-padded, as LogitLens.run) captures the components
(`core.components`); their direct effects on chosen tokens come from `dla.attribution`, and the
tokens each component promotes and suppresses most, over the whole vocabulary, from one call of
`ops.logit_extremes` on every (component, position) row.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import ops
from ..ops.logit_extremes import logit_extremes
from ..core.models import LensModel
from ..data.prompts import input_sequences, one_token
from ..data.windows import pad_right
from ..ops.lens_stats import check_k
from .attribution import KINDS, check_component, component_names, component_rows, contributions, readout_directions
from ..core.components import ComponentCapture, Frozen
from ..core.structure import projection_weight
from .result import DLAResult


# what each name's prefix needs captured
_NEEDS = {"embed": "embed", "bias": "embed", "attn": "attn", "mlp": "mlp", "head": "head", "attn_bias": "head",
          "neuron": "neuron", "mlp_bias": "neuron"}


def parse_components(components) -> tuple[set, list]:
    """components → (kinds captured, specific names, validated once the head and neuron counts are known)."""
    if isinstance(components, str):
        components = [components]
    kinds, names = set(), []
    for c in components:
        prefix = c.split(".")[0] if isinstance(c, str) else None
        if c in KINDS:
            kinds.add(c)
        elif prefix in _NEEDS and "." in c:
            names.append(c)
            kinds.add(_NEEDS[prefix])
        else:
            raise ValueError(f"components: unknown {c!r}; expected some of {KINDS} or names like head.9.3")
    if not kinds:
        raise ValueError(f"components: expected at least one of {KINDS}")
    return kinds, names


def _per_prompt(lm, name: str, value, n: int) -> list[int] | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name}: expected one token per prompt ({n}), got {len(values)}")
    return [one_token(lm, name, v) for v in values]


@torch.no_grad()
def direct_logit_attribution(lm: LensModel, prompts, components=("attn", "mlp", "head"), *, answer=None, counterfactual=None,
        tokens=None, sources=(), k: int = 10, attention_mask: torch.Tensor | None = None, batch_size: int = 8,
        backend: str | None = None, progress: bool = False) -> DLAResult:
    """Direct logit attribution of every real position of `prompts` (text, a list of texts or token ids).

    components: kinds from ("embed", "attn", "mlp", "head", "neuron") and/or names ("head.9.3"):
    embed, attn.i and mlp.i are always attributed (they sum to the logits); "head" adds every head
    (and each block's output-projection bias), "neuron" every MLP neuron. Targets at every position:
    "next" (the true next token; none at a prompt's last token) and "top1" (the model's final
    top-1); `tokens` (ids or one-token texts) adds each of them at every position; `answer` and
    `counterfactual` (one token each, or one per prompt) are read at each prompt's last position,
    with "diff" = answer − counterfactual, the IOI logit difference. k: the top-k promoted and
    suppressed tokens of each component at each position over the full vocabulary (0: none).
    sources: heads ("head.9.3") whose effects are also split by source position (`result.sources`:
    A_h(t, s) · v_h(s) W_O^h read along each target; runs the attention in its eager form).
    """
    if not isinstance(lm, LensModel):
        raise ValueError(f"lm: expected a LensModel, got {type(lm).__name__}")
    kinds, names = parse_components(components)
    if k:
        k = check_k(k, lm.vocab_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    seqs = input_sequences(lm, prompts, attention_mask, 1 << 62)  # never cut: a prompt is one sequence
    for j, s in enumerate(seqs):
        if lm.context_length is not None and s.numel() > lm.context_length:
            raise ValueError(f"prompts: prompt {j} has {s.numel()} tokens, more than the model's context of "
                             f"{lm.context_length}")
    answers = _per_prompt(lm, "answer", answer, len(seqs))
    counters = _per_prompt(lm, "counterfactual", counterfactual, len(seqs))
    if counters is not None and answers is None:
        raise ValueError("counterfactual: needs an answer")
    same = [j for j, (a, c) in enumerate(zip(answers or [], counters or [])) if a == c]
    if same:  # answer − counterfactual would be 0 for every component
        raise ValueError(f"counterfactual: the same token as the answer ({answers[same[0]]}) for prompt {same[0]}; "
                         "give a different token")
    extra = [one_token(lm, "tokens", t) for t in (tokens or [])]
    sources = [sources] if isinstance(sources, str) else list(sources)
    if any(not isinstance(n, str) or not n.startswith("head.") for n in sources):
        raise ValueError(f"sources: expected head names like 'head.9.3', got {sources}")
    kinds |= {"head"} if sources else set()
    capture = ComponentCapture(lm, heads="head" in kinds, neurons="neuron" in kinds)
    d_ff = [projection_weight(p.mlp_down)[0].shape[0] for p in capture.parts] if capture.neurons else None
    for name in names + sources:
        check_component(name, lm.n_layers, capture.n_heads, d_ff)
    if sources:
        capture = ComponentCapture(lm, heads=True, neurons="neuron" in kinds,
                                   sources=[tuple(int(x) for x in n.split(".")[1:]) for n in sources])
    backend = ops.pick_backend(lm.device, backend)
    parts = []
    for first in tqdm(range(0, len(seqs), batch_size), desc="dla", unit="batch", disable=not progress):
        ids, mask = pad_right(seqs[first:first + batch_size])
        comp, res = capture.run(ids, mask)
        final_norm = Frozen.of(lm.norm, comp.final)
        top1 = ops.lens_stats(comp.final[None], lm.norm, lm.unembed, None, 1, backend=backend).topk_ids[0, :, 0]
        prompt = res.batch_index + first
        targets = _targets(res, top1.cpu(), prompt, extra, answers, counters)
        contrib, logits, by_source = _attribute(lm, comp, final_norm, targets, sources)
        extremes = None
        if k:
            ext_names, vecs = component_rows(comp, final_norm)
            extremes = logit_extremes(vecs, lm.unembed.weight, k, backend=backend)
        parts.append(dict(input_ids=res.input_ids, batch_index=prompt, position=res.position,
                          targets={n: t.cpu() for n, t in targets.items()}, contrib=contrib, logits=logits,
                          extremes=extremes, sources=by_source))
    all_names = component_names(lm.n_layers, capture.n_heads, d_ff)
    return DLAResult.concat(all_names, parts, ext_names if k else None, lm.tokenizer, lm.describe())


def _targets(res, top1: torch.Tensor, prompt: torch.Tensor, extra, answers, counters) -> dict:
    """The token each row is attributed to, per kind (-1: none at that row)."""
    rows = res.input_ids.numel()
    last = torch.zeros(rows, dtype=torch.bool)  # each prompt's last position
    last[torch.cat([(res.batch_index == b).nonzero()[-1] for b in res.batch_index.unique()])] = True
    targets = {"next": res.targets.masked_fill(res.targets < 0, -1), "top1": top1}
    for tid in extra:
        targets[f"token:{tid}"] = torch.full((rows,), tid)
    if answers is not None:
        targets["answer"] = torch.where(last, torch.tensor(answers)[prompt], -1)
    if counters is not None:
        targets["counterfactual"] = torch.where(last, torch.tensor(counters)[prompt], -1)
    return targets


def _attribute(lm: LensModel, comp, final_norm: Frozen, targets: dict, sources: list) -> tuple[dict, dict, dict]:
    """Per kind: every component's effect [C, rows], the model's raw logit [rows], and each source head's
    split by source position [rows, seq]; NaN where a row has no target."""
    contrib, logits, by_source = {}, {}, {src: {} for src in sources}
    normed = lm.norm(comp.final)
    for name, ids_t in targets.items():
        ids_t = ids_t.to(comp.final.device)
        none = ids_t < 0
        contrib[name] = contributions(comp, final_norm, lm, ids_t).masked_fill(none[None], float("nan"))
        raw = (normed * lm.unembed.weight[ids_t.clamp(min=0)].to(normed.dtype)).sum(-1)
        if lm.unembed.bias is not None:
            raw = raw + lm.unembed.bias[ids_t.clamp(min=0)].to(raw.dtype)
        logits[name] = raw.masked_fill(none, float("nan"))
        rho = readout_directions(final_norm, lm.unembed.weight, ids_t)
        for src in sources:
            layer, head = (int(x) for x in src.split(".")[1:])
            by_source[src][name] = comp.source_effects(layer, head, rho).masked_fill(none[:, None], float("nan"))
    return contrib, logits, by_source
