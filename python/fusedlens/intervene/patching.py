"""Activation patching (causal tracing): the clean run's state at one (site, position) put into the
corrupted run, for every cell of a layers × positions grid, each cell one row of a batched forward.

The clean run's states are captured once (residual and component capture); a grid of C
cells costs ⌈C / batch_size⌉ forwards of the corrupted prompt. The metric is read at the corrupted
prompt's last position: the logit difference of the answer and a counterfactual token, or the
answer's probability; `restored` = (patched − corrupted) / (clean − corrupted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core.capture import capture_residuals
from ..core.components import ComponentCapture
from ..core.models import LensModel
from ..data.prompts import one_token
from ..report.page import Viewable
from ..report.patch import knockout_views, patch_views
from .hooks import Edit, Intervention
from .suffix import SuffixRuns

KINDS = ("resid", "mid", "attn", "mlp", "head")
METRICS = ("logit_diff", "prob")


@dataclass
class PatchResult(Viewable):
    """values[kind] / restored[kind]: [layers, positions] ([layers, heads, positions] for heads), the
    metric with that cell patched and its restored fraction; positions are the corrupted prompt's.
    `save_html` / a notebook: a tab per kind with the restored fraction over (layer, position)."""

    kinds: list[str]
    positions: list[int]
    tokens: list[str]
    clean_tokens: list[str]
    metric: str
    clean: float
    corrupted: float
    values: dict
    restored: dict
    meta: dict = field(default_factory=dict)

    html_title = "fusedlens: activation patching"

    def views(self, vocab) -> list[dict]:
        return patch_views(self, vocab)

    def to_dict(self) -> dict:
        def nested(t):
            return [[None if v != v else v for v in row] if not isinstance(row[0], list) else row
                    for row in t.tolist()] if t.dim() == 2 else t.tolist()

        return {"format": "fusedlens.PatchResult/1", **self.meta, "kinds": self.kinds, "positions": self.positions,
                "tokens": self.tokens, "clean_tokens": self.clean_tokens, "metric": self.metric, "clean": self.clean,
                "corrupted": self.corrupted, "values": {k: nested(v) for k, v in self.values.items()},
                "restored": {k: nested(v) for k, v in self.restored.items()}}


def prompt_ids(lm: LensModel, name: str, prompt) -> torch.Tensor:
    if isinstance(prompt, torch.Tensor):
        ids = prompt.reshape(-1).long()
    elif isinstance(prompt, str) and prompt.strip() and lm.tokenizer is not None:
        ids = torch.tensor(lm.tokenizer(prompt)["input_ids"], dtype=torch.long)
    else:
        raise ValueError(f"{name}: expected a non-empty text (with a tokenizer) or token ids")
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= lm.vocab_size:
        raise ValueError(f"{name}: token ids must be in [0, {lm.vocab_size})")
    return ids


def metric_of(logits: torch.Tensor, metric: str, answer, counter) -> torch.Tensor:
    """The metric of last-position logits [rows, vocab], in float64: answer / counter are one token id,
    or one per row (a tensor [rows])."""
    z = logits.double()
    rows = torch.arange(z.shape[0], device=z.device)
    pick = (lambda t: t.to(z.device)) if isinstance(answer, torch.Tensor) else (lambda t: t)
    if metric == "prob":
        return torch.softmax(z, -1)[rows, pick(answer)]
    return z[rows, pick(answer)] - z[rows, pick(counter)]


def clean_states(lm: LensModel, ids: torch.Tensor, kinds) -> dict[str, torch.Tensor]:
    """The clean run's state [positions, width] at every site of the kinds (embed with resid)."""
    out = {}
    if "resid" in kinds or "mid" in kinds:
        res = capture_residuals(lm, ids[None], embed=True, mid="mid" in kinds)
        for site, h in zip(res.sites, res.hidden):
            if site.split(".")[0] in kinds or (site == "embed" and "resid" in kinds):
                out[site] = h
    if {"attn", "mlp", "head"} & set(kinds):
        comp, _ = ComponentCapture(lm, heads="head" in kinds).run(ids[None])
        for i in range(lm.n_layers):
            if "attn" in kinds:
                out[f"attn.{i}"] = comp.attn[i]
            if "mlp" in kinds:
                out[f"mlp.{i}"] = comp.mlp[i]
            if "head" in kinds:
                z = comp.head_z[i].reshape(comp.head_z.shape[1], comp.n_heads, -1)
                for h in range(comp.n_heads):
                    out[f"head.{i}.{h}"] = z[:, h]
    return out


@torch.no_grad()
def patch(lm: LensModel, clean, corrupted, answer, counterfactual=None, *, kinds=("resid", "attn", "mlp"),
          metric: str | None = None, position_map=None, batch_size: int = 32, reuse: bool = True,
          progress: bool = False) -> PatchResult:
    """Patch the clean run into the corrupted one at every (layer, position) of each kind's grid.

    clean, corrupted: texts or token ids of the same length (else position_map: pairs (clean position,
    corrupted position) to patch); answer / counterfactual: one token each; metric: "logit_diff"
    (needs a counterfactual; the default when one is given) or "prob" (the answer's probability);
    kinds: from KINDS ("resid" includes the embedding as layer -1; "head" patches each head's
    slice of the output projection's input); reuse: run each patch only from its block and position
    on, on the corrupted run's cache and lower blocks (intervene.suffix; equal to the whole forward
    to float32 accuracy), or False: the whole corrupted forward per cell.
    """
    if not isinstance(lm, LensModel):
        raise ValueError(f"lm: expected a LensModel, got {type(lm).__name__}")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds: expected some of {KINDS}, got {kinds}")
    metric = metric or ("logit_diff" if counterfactual is not None else "prob")
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if metric == "logit_diff" and counterfactual is None:
        raise ValueError("metric: logit_diff needs a counterfactual token")
    if counterfactual is not None and counterfactual == answer:
        raise ValueError(f"counterfactual: {counterfactual!r} is the answer; the logit difference would be 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    a = one_token(lm, "answer", answer)
    b = None if counterfactual is None else one_token(lm, "counterfactual", counterfactual)
    if a == b:
        raise ValueError(f"counterfactual: the same token as the answer ({a}); the logit difference would be 0")
    clean_ids, bad_ids = prompt_ids(lm, "clean", clean), prompt_ids(lm, "corrupted", corrupted)
    if position_map is None:
        if clean_ids.numel() != bad_ids.numel():
            raise ValueError(f"clean, corrupted: {clean_ids.numel()} and {bad_ids.numel()} tokens; give the same "
                             f"length or a position_map of (clean position, corrupted position) pairs")
        pairs = [(p, p) for p in range(bad_ids.numel())]
    else:
        pairs = [(int(c), int(r)) for c, r in position_map]
        bad = [(c, r) for c, r in pairs if not (0 <= c < clean_ids.numel() and 0 <= r < bad_ids.numel())]
        if not pairs or bad:
            raise ValueError(f"position_map: pairs out of range {bad or '(none given)'} for {clean_ids.numel()} "
                             f"clean and {bad_ids.numel()} corrupted positions")
    for name, ids in (("clean", clean_ids), ("corrupted", bad_ids)):
        if lm.context_length is not None and ids.numel() > lm.context_length:
            raise ValueError(f"{name}: {ids.numel()} tokens, more than the model's context of {lm.context_length}")

    def forward(ids: torch.Tensor, edits=()) -> torch.Tensor:
        return metric_of(_logits(lm, ids, edits)[:, -1], metric, a, b).cpu()

    m_clean, m_bad = float(forward(clean_ids[None])), float(forward(bad_ids[None]))
    if m_clean == m_bad:  # restored = (patched - corrupted) / 0 in every cell: no grid is worth its forwards
        raise ValueError(f"clean, corrupted: the {metric} is {m_clean:.6g} on both runs, so no patch can restore "
                         "anything; choose a corrupted prompt that changes the answer")
    states = clean_states(lm, clean_ids, kinds)
    heads = None
    cells = []  # (kind, grid index, site, corrupted position, clean position)
    for kind in kinds:
        layers = ([-1] if kind == "resid" else []) + list(range(lm.n_layers))
        for li, layer in enumerate(layers):
            names = [f"head.{layer}.{h}" for h in range(sum(s.startswith(f"head.{layer}.") for s in states))] \
                if kind == "head" else ["embed" if layer < 0 else f"{kind}.{layer}"]
            heads = len(names) if kind == "head" else heads
            for hi, site in enumerate(names):
                for pi, (c, r) in enumerate(pairs):
                    cells.append((kind, (li, hi, pi) if kind == "head" else (li, pi), site, r, c))
    values = {k: torch.full((lm.n_layers + (k == "resid"),) + ((heads,) if k == "head" else ()) + (len(pairs),),
                            math.nan, dtype=torch.float64) for k in kinds}
    if reuse:
        runs = SuffixRuns(lm, bad_ids)
        got = runs.metrics([(site, states[site][c], r) for _, _, site, r, c in cells],
                           lambda z: metric_of(z, metric, a, b), batch_size, progress=progress)
        for (kind, index, *_), v in zip(cells, got):
            values[kind][index] = v
        forwards = runs.forwards + 3
    else:
        for first in tqdm(range(0, len(cells), batch_size), desc="patch", unit="batch", disable=not progress):
            group = cells[first:first + batch_size]
            edits = [Edit(site, "replace", states[site][c], rows=[j], positions=[r])
                     for j, (_, _, site, r, c) in enumerate(group)]
            got = forward(bad_ids[None].expand(len(group), -1), edits)
            for (kind, index, *_), v in zip(group, got):
                values[kind][index] = v
        forwards = -(-len(cells) // batch_size) + 2
    span = m_clean - m_bad
    restored = {k: (v - m_bad) / span if span != 0 else torch.full_like(v, math.nan) for k, v in values.items()}
    tok = lm.tokenizer
    text = (lambda ids: [tok.decode([int(i)]) for i in ids]) if tok is not None else (lambda ids: [str(int(i)) for i in ids])
    return PatchResult(kinds, [r for _, r in pairs], text(bad_ids), text(clean_ids), metric, m_clean, m_bad, values,
                       restored, meta={"answer": a, "counterfactual": b, "cells": len(cells), "forwards": forwards,
                                       "reuse": reuse})


@dataclass
class KnockoutResult(Viewable):
    """metric[w] with the edges queries → keys cut in blocks windows[w] = [first, last]; drop = base − metric.
    tokens: the prompt's tokens as text (when the model has a tokenizer)."""

    windows: list[tuple[int, int]]
    queries: list[int]
    keys: list[int]
    metric_name: str
    base: float
    metric: torch.Tensor
    drop: torch.Tensor
    tokens: list[str] | None = None

    html_title = "fusedlens: attention knockout"

    def views(self, vocab) -> list[dict]:
        return knockout_views(self, vocab)

    def to_dict(self) -> dict:
        return {"format": "fusedlens.KnockoutResult/1", "windows": self.windows, "queries": self.queries,
                "keys": self.keys, "metric": self.metric_name, "base": self.base, "values": self.metric.tolist(),
                "drop": self.drop.tolist(), "tokens": self.tokens}


@torch.no_grad()
def knockout(lm: LensModel, prompt, answer, counterfactual=None, *, keys, queries=(-1,), window: int | None = None,
             metric: str | None = None, batch_size: int = 32) -> KnockoutResult:
    """Attention knockout (the survey's "block attention from the last position to the subject"): cut the
    edges queries → keys in every block of a sliding window of `window` blocks, one window per batch row,
    and read the metric at the last position (window: default 9 blocks, or all if fewer)."""
    window = min(9, lm.n_layers) if window is None else window
    metric = metric or ("logit_diff" if counterfactual is not None else "prob")
    if metric not in METRICS or (metric == "logit_diff" and counterfactual is None):
        raise ValueError(f"metric: expected one of {METRICS} (logit_diff needs a counterfactual), got {metric!r}")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= lm.n_layers:
        raise ValueError(f"window: expected an int in [1, {lm.n_layers}], got {window!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    a = one_token(lm, "answer", answer)
    b = None if counterfactual is None else one_token(lm, "counterfactual", counterfactual)
    if a == b:
        raise ValueError(f"counterfactual: the same token as the answer ({a}); the logit difference would be 0")
    ids = prompt_ids(lm, "prompt", prompt)
    n = ids.numel()

    def positions(name, values):
        out = [int(p) for p in values]
        bad = [p for p in out if not -n <= p < n]
        if bad:
            raise ValueError(f"{name}: positions {bad} out of range for {n} tokens")
        return sorted({p % n for p in out})

    keys, queries = positions("keys", keys), positions("queries", queries)
    if not keys or not queries:
        raise ValueError(f"{'keys' if not keys else 'queries'}: no position given")
    check_causal_edges(keys, queries)
    windows = [(s, min(s + window, lm.n_layers) - 1) for s in range(0, lm.n_layers - window + 1)]
    # The baseline is one more row of the first batch, uncut: the same (eager) attention path and the
    # same batch as the windows, so a cut that changes nothing reports a drop of exactly 0.
    rows = [None] + windows
    values = []
    for first in range(0, len(rows), batch_size):
        group = rows[first:first + batch_size]
        edits = [Edit(f"attn.{layer}", "knockout", keys, rows=[j], positions=queries)
                 for j, w in enumerate(group) if w is not None for layer in range(w[0], w[1] + 1)]
        if not edits:  # a batch of the baseline alone (batch_size 1): an empty cut keeps it on the eager path
            edits = [Edit("attn.0", "knockout", [], rows=[0], positions=queries)]
        values.append(metric_of(_logits(lm, ids[None].expand(len(group), -1), edits)[:, -1], metric, a, b).cpu())
    values = torch.cat(values)
    base, values = float(values[0]), values[1:]
    tokens = None if lm.tokenizer is None else [lm.tokenizer.decode([int(i)]) for i in ids]
    return KnockoutResult(windows, queries, keys, metric, base, values, base - values, tokens)


def check_causal_edges(keys: list[int], queries: list[int]) -> None:
    """Non-negative key and query positions of a knockout in a causal model: a key after every query is an
    edge the model never has (its cut would change nothing), and cutting every key a query sees leaves
    its softmax over masked scores alone (attention spread over all positions, the future included)."""
    late = [k for k in keys if k > max(queries)]
    if late:
        raise ValueError(f"knockout_keys: positions {late} come after every query position {queries}; a causal "
                         "model has no such edges (keys must precede or equal a query)")
    for q in queries:
        if all(k in keys for k in range(q + 1)):
            raise ValueError(f"knockout_keys: cut every key of query position {q} (0-{q}); leave it at least "
                             "one key, e.g. itself")


def _logits(lm: LensModel, ids: torch.Tensor, edits) -> torch.Tensor:
    with Intervention(lm, list(edits)):
        return lm.model(input_ids=ids.to(lm.device), use_cache=False).logits
