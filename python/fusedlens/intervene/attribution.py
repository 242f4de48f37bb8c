"""Attribution patching: every node's patching effect estimated from a clean forward, a corrupted
forward and backward passes (Nanda 2022, "Attribution patching"), and AtP* (Kramár, Lieberum, Shah,
Nanda 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to components").

AtP estimates the metric change of patching node n's clean state into the corrupted run by its first
order term, (n_clean − n_corrupted) · ∂metric/∂n, with the gradient taken on the corrupted run; one
backward gives it for every node. A zero offset added to each node's state in the corrupted forward
is what the gradient is taken against, so the forward computes exactly the model's values.

AtP* changes two things. The QK fix (qk_fix.py) recomputes the softmax exactly for query and key
nodes. GradDrop runs one more backward per layer ℓ with the gradient through block ℓ's attention and
MLP outputs set to zero (AtP+GD_ℓ), and scores each node by (1 / (L − 1)) Σ_ℓ |AtP+GD_ℓ(n)|, a
magnitude: a node whose direct and indirect effects cancel in AtP shows up in the layers that drop
one of them.

Results have `patch`'s layout (values [layers(, heads | neurons), positions], resid with the
embedding as layer −1), so the two compare cell by cell. Pairs of prompts of one length run in
batches; over many pairs the estimates are averaged (GradDrop: the mean estimate per dropped layer,
then its magnitude) without keeping per-pair activations.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core.attention_tap import AttentionTap
from ..core.models import LensModel
from ..core.structure import block_parts, first_tensor, n_heads, with_first
from ..data.prompts import one_token
from ..report.attribution import attribution_views
from ..report.page import Viewable
from .patching import METRICS, metric_of, prompt_ids
from .qk_fix import key_fix, query_fix
from .verify import verify as check_estimate

KINDS = ("resid", "attn", "mlp", "head", "neuron", "q", "k", "v")
METHODS = ("atp", "atp*")


class _Gate(torch.autograd.Function):
    """Identity forward; backward passes the gradient unless `state["drop"]` names this layer."""

    @staticmethod
    def forward(ctx, x, layer, state):
        ctx.layer, ctx.state = layer, state
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return (torch.zeros_like(g) if ctx.state.get("drop") == ctx.layer else g), None, None


class _Nodes:
    """Hooks over one forward that keep each wanted node state ([B, T, width], q / k / v [B, heads, T,
    dh]) keyed (kind, layer), and with `offsets` add a zero leaf to each, for the gradient."""

    def __init__(self, lm: LensModel, kinds: set, *, offsets: bool, gates: dict | None = None):
        self.lm, self.kinds, self.use_offsets, self.gates = lm, kinds, offsets, gates
        self.parts = block_parts(lm, heads="z" in kinds, neurons="neuron" in kinds)
        self.states: dict = {}
        self.offsets: dict = {}
        self.shape = None
        self._handles = []
        self._tap = None

    def _touch(self, key, x: torch.Tensor) -> torch.Tensor:
        self.states[key] = x.detach()
        if not self.use_offsets:
            return x
        offset = torch.zeros_like(x, requires_grad=True)
        self.offsets[key] = offset
        return x + offset

    def _out_hook(self, key):
        def hook(_m, _a, out):
            h = first_tensor(out)
            return with_first(out, self._touch(key, h.reshape(*self.shape, h.shape[-1])))
        return hook

    def _in_hook(self, key):
        def hook(_m, args, kwargs):
            if args:
                h = args[0]
                return (self._touch(key, h.reshape(*self.shape, h.shape[-1])).reshape(h.shape), *args[1:]), kwargs
            h = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": self._touch(key, h.reshape(*self.shape, h.shape[-1])).reshape(h.shape)}
        return hook

    def _gate_hook(self, layer):
        def hook(_m, _a, out):
            return with_first(out, _Gate.apply(first_tensor(out), layer, self.gates))
        return hook

    def _qkv(self, layer, q, k, v):
        got = {"q": q, "k": k, "v": v}
        return tuple(self._touch((n, layer), got[n]) if n in self.kinds else got[n] for n in ("q", "k", "v"))

    def run(self, ids: torch.Tensor) -> torch.Tensor:
        """Last-position logits [B, vocab] of one forward, the nodes kept."""
        self.shape, self.states, self.offsets = tuple(ids.shape), {}, {}
        add = self._handles.append
        blocks = self.lm.layers
        if "resid" in self.kinds:
            add(blocks[0].register_forward_pre_hook(self._in_hook(("resid", -1)), with_kwargs=True))
        for i, (block, p) in enumerate(zip(blocks, self.parts)):
            if "resid" in self.kinds:
                add(block.register_forward_hook(self._out_hook(("resid", i))))
            for kind in ("attn", "mlp"):
                if kind in self.kinds:
                    add(p.added(kind).register_forward_hook(self._out_hook((kind, i))))
            if "z" in self.kinds:
                add(p.attn_out.register_forward_pre_hook(self._in_hook(("z", i)), with_kwargs=True))
            if "neuron" in self.kinds:
                add(p.mlp_down.register_forward_pre_hook(self._in_hook(("neuron", i)), with_kwargs=True))
            if self.gates is not None:  # after the node hooks: a dropped layer's own nodes get no gradient
                add(p.added("attn").register_forward_hook(self._gate_hook(i)))
                add(p.added("mlp").register_forward_hook(self._gate_hook(i)))
        tap = AttentionTap(self.lm, self._qkv) if self.kinds & {"q", "k", "v"} else None
        try:
            with tap or nullcontext():
                out = self.lm.model(input_ids=ids.to(self.lm.device), use_cache=False, logits_to_keep=1).logits[:, -1]
            self.calls = tap.calls if tap is not None else {}
            return out
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()


@dataclass
class AttributionResult(Viewable):
    """estimate[kind]: the method's score per node, in `patch`'s layout (atp: the signed metric change;
    atp*: GradDrop's magnitude); signed[kind]: the signed first-order estimate (QK-fixed for atp*);
    dropped[kind]: [L, ...] the signed estimate with each layer's gradient dropped (GradDrop only).
    clean / corrupted: the metric on the two runs (averaged over the pairs). `save_html` / a notebook: a tab
    per kind with the estimate over (layer, position), the exact effect where verification measured it."""

    kinds: list[str]
    method: str
    positions: list[int]
    tokens: list[str]
    clean_tokens: list[str]
    metric: str
    clean: float
    corrupted: float
    estimate: dict
    signed: dict
    dropped: dict | None = None
    meta: dict = field(default_factory=dict)
    verification: dict | None = None  # per kind, from verify=k (intervene.verify)

    html_title = "fusedlens: attribution patching"

    def views(self, vocab) -> list[dict]:
        return attribution_views(self, vocab)

    @property
    def magnitude_only(self) -> bool:
        return self.dropped is not None

    def restored(self) -> dict:
        """The signed estimate as a restored fraction, (estimate) / (clean − corrupted)."""
        span = self.clean - self.corrupted
        return {k: v / span if span != 0 else torch.full_like(v, math.nan) for k, v in self.signed.items()}

    def to_dict(self) -> dict:
        return {"format": "fusedlens.AttributionResult/1", **self.meta, "method": self.method, "kinds": self.kinds,
                "positions": self.positions, "tokens": self.tokens, "clean_tokens": self.clean_tokens,
                "metric": self.metric, "clean": self.clean, "corrupted": self.corrupted,
                "estimate": {k: v.tolist() for k, v in self.estimate.items()},
                "signed": {k: v.tolist() for k, v in self.signed.items()}, "verification": self.verification}


def _node_estimates(kind: str, layer: int, clean: _Nodes, bad: _Nodes, grads: dict, qk: bool,
                    heads: int) -> torch.Tensor:
    """Per-row estimates of one layer's nodes: [B, T] (resid, attn, mlp) or [B, heads | neurons, T]."""
    if kind in ("q", "k") and qk:
        fix = query_fix if kind == "q" else key_fix
        return fix(bad.calls[layer], clean.states[(kind, layer)], grads[("z", layer)])
    key = ("z" if kind == "head" else kind, layer)
    diff = (clean.states[key].double() - bad.states[key].double()) * grads[key].double()
    if kind in ("q", "k", "v"):
        return diff.sum(-1)  # [B, heads, T]
    if kind == "head":
        b, t, width = diff.shape
        return diff.reshape(b, t, heads, width // heads).sum(-1).transpose(1, 2)
    if kind == "neuron":
        return diff.transpose(1, 2)
    return diff.sum(-1)


def _as_list(name: str, value, n: int | None) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if n is not None and len(items) not in (1, n):
        raise ValueError(f"{name}: {len(items)} given for {n} prompt pairs; give one, or one per pair")
    return items * (n // len(items)) if n is not None and len(items) == 1 else items


def attribution_patch(lm: LensModel, clean, corrupted, answer, counterfactual=None, *,
                      kinds=("resid", "attn", "mlp", "head"), method: str = "atp", metric: str | None = None,
                      qk_fix: bool | None = None, graddrop: bool | None = None, batch_size: int = 8,
                      reduce: str = "mean", verify: int = 0, verify_sample: int | None = None,
                      threshold: float | None = None, seed: int = 0, progress: bool = False) -> AttributionResult:
    """Estimate the effect of patching every node of `kinds` from the clean run into the corrupted one.

    clean, corrupted: a text (or token ids), or lists of them (pairs, all of one length); answer /
    counterfactual: one token, or one per pair; metric: "logit_diff" (the default with a
    counterfactual) or "prob"; method: "atp" or "atp*" (= qk_fix and graddrop, each overridable);
    kinds: from KINDS ("head": each head's slice of the output projection's input; "neuron": each
    input of the MLP's down projection; "q", "k", "v": per query or key/value head, after any rotary
    embedding).

    reduce: "mean" (default) or "sum" of the estimates (and of the two metrics) over the pairs.
    verify=k patches the top k nodes of each kind by |estimate| exactly, and `verify_sample` (default
    k) nodes drawn from the rest (seeded), and bounds the fraction of unverified nodes with |effect| ≥
    threshold (default 5 % of |clean − corrupted|): `result.verification` (intervene.verify).
    """
    if not isinstance(lm, LensModel):
        raise ValueError(f"lm: expected a LensModel, got {type(lm).__name__}")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds: expected distinct kinds from {KINDS}, got {kinds}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    qk = method == "atp*" if qk_fix is None else bool(qk_fix)
    drop = method == "atp*" if graddrop is None else bool(graddrop)
    metric = metric or ("logit_diff" if counterfactual is not None else "prob")
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if metric == "logit_diff" and counterfactual is None:
        raise ValueError("metric: logit_diff needs a counterfactual token")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce: expected 'mean' or 'sum', got {reduce!r}")
    for name, v in (("verify", verify), ("verify_sample", 0 if verify_sample is None else verify_sample)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {v!r}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and threshold > 0):
        raise ValueError(f"threshold: expected a positive number, got {threshold!r}")
    cleans = _as_list("clean", clean, None)
    bads = _as_list("corrupted", corrupted, len(cleans))
    if len(bads) != len(cleans):
        raise ValueError(f"clean, corrupted: {len(cleans)} and {len(bads)} prompts; give one corrupted prompt per clean one")
    n = len(cleans)
    answers = [one_token(lm, "answer", x) for x in _as_list("answer", answer, n)]
    counters = None if counterfactual is None else \
        [one_token(lm, "counterfactual", x) for x in _as_list("counterfactual", counterfactual, n)]
    if counters is not None and any(a == b for a, b in zip(answers, counters)):
        raise ValueError("counterfactual: the same token as the answer; the logit difference would be 0")
    clean_ids = [prompt_ids(lm, "clean", x) for x in cleans]
    bad_ids = [prompt_ids(lm, "corrupted", x) for x in bads]
    t = clean_ids[0].numel()
    lengths = sorted({x.numel() for x in clean_ids + bad_ids})
    if len(lengths) > 1:
        raise ValueError(f"clean, corrupted: prompts of {lengths} tokens; attribution patching compares node by node "
                         "at each position, so every clean and corrupted prompt needs the same length")
    if lm.context_length is not None and t > lm.context_length:
        raise ValueError(f"clean: {t} tokens, more than the model's context of {lm.context_length}")

    heads = n_heads(lm)
    wanted = set(kinds) | ({"z"} if "head" in kinds or (qk and {"q", "k"} & set(kinds)) else set())
    wanted.discard("head")
    settings = [None] + (list(range(lm.n_layers)) if drop else [])
    gates = {"drop": None} if drop else None
    sums = None
    m_clean = m_bad = 0.0
    bar = tqdm(total=n, desc=f"attribution ({method})", unit="pair", disable=not progress)
    for first in range(0, n, batch_size):
        rows = range(first, min(first + batch_size, n))
        a = torch.tensor([answers[i] for i in rows])
        b = None if counters is None else torch.tensor([counters[i] for i in rows])
        c_nodes = _Nodes(lm, wanted, offsets=False)
        with torch.no_grad():
            mc = metric_of(c_nodes.run(torch.stack([clean_ids[i] for i in rows])), metric, a, b)
        r_nodes = _Nodes(lm, wanted, offsets=True, gates=gates)
        with torch.enable_grad():
            mr = metric_of(r_nodes.run(torch.stack([bad_ids[i] for i in rows])), metric, a, b)
            keys = list(r_nodes.offsets)
            per_setting = []
            for s, setting in enumerate(settings):
                if gates is not None:
                    gates["drop"] = setting
                got = torch.autograd.grad(mr.sum(), [r_nodes.offsets[k] for k in keys],
                                          retain_graph=s < len(settings) - 1, allow_unused=True)
                grads = {k: (g if g is not None else torch.zeros_like(r_nodes.offsets[k])) for k, g in zip(keys, got)}
                with torch.no_grad():
                    per_setting.append({kind: torch.stack(
                        ([_node_estimates("resid", -1, c_nodes, r_nodes, grads, qk, heads)] if kind == "resid" else [])
                        + [_node_estimates(kind, i, c_nodes, r_nodes, grads, qk, heads) for i in range(lm.n_layers)]
                    ).sum(1) for kind in kinds})  # summed over the batch's pairs
        if sums is None:
            sums = per_setting
        else:
            for acc, new in zip(sums, per_setting):
                for kind in kinds:
                    acc[kind] += new[kind]
        m_clean += float(mc.sum())
        m_bad += float(mr.detach().sum())
        bar.update(len(rows))
    bar.close()
    div = n if reduce == "mean" else 1
    means = [{k: v.cpu() / div for k, v in s.items()} for s in sums]
    signed = means[0]
    if drop:
        dropped = {k: torch.stack([m[k] for m in means[1:]]) for k in kinds}
        estimate = {k: v.abs().sum(0) / max(lm.n_layers - 1, 1) for k, v in dropped.items()}
    else:
        dropped, estimate = None, signed
    tok = lm.tokenizer
    text = (lambda ids: [tok.decode([int(i)]) for i in ids]) if tok is not None else (lambda ids: [str(int(i)) for i in ids])
    result = AttributionResult(kinds, method, list(range(t)), text(bad_ids[0]), text(clean_ids[0]), metric,
                               m_clean / div, m_bad / div, estimate, signed, dropped,
                               meta={"pairs": n, "reduce": reduce, "qk_fix": qk, "graddrop": drop, "backwards": len(settings),
                                     "answer": answers[0] if n == 1 else answers,
                                     "counterfactual": (counters[0] if n == 1 else counters) if counters else None})
    if verify:
        pairs = [(clean_ids[i], bad_ids[i], answers[i], None if counters is None else counters[i]) for i in range(n)]
        limit = threshold if threshold is not None else 0.05 * abs(result.clean - result.corrupted)
        result.verification = check_estimate(lm, estimate, pairs, metric, top=verify,
                                             sample=verify if verify_sample is None else verify_sample,
                                             threshold=limit, seed=seed)
    return result
