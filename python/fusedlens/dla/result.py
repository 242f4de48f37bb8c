"""DLAResult: every component's direct effect on each target at each position, and its extreme tokens."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import report
from ..core.files import write_json
from ..ops.logit_extremes import LogitExtremes
from ..report.dla import default_kind, dla_views
from ..report.page import Viewable

FORMAT = "fusedlens.DLAResult/1"


@dataclass
class DLAResult(Viewable):
    """Rows are the real positions of the prompts, in order (`batch_index` = prompt, `position`).

    components: names of the rows of every contribution tensor (dla.attribution.component_names);
    targets[kind]: the token id each row is attributed to (-1: none there), for kind in "next",
    "top1", "token:<id>", "answer", "counterfactual", and "diff" (answer − counterfactual);
    contrib[kind]: [components, rows] direct effects (NaN where the row has no such target);
    logits[kind]: the model's own raw final logit (before any soft-cap) of that token, which the
    block-level components (embed, attn.i, mlp.i, bias) sum to. extremes: the top-k promoted and
    suppressed tokens of each of `extreme_components` at each row, [components, rows, k].
    sources[head][kind]: that head's effect split by source position, [rows, positions] (entry (t, s):
    what position s of the same prompt contributes through the head at t; each row sums to the head's
    contrib; columns past a prompt's length are 0). tokenizer: the model's, set by the run that made it
    (token strings in `save_html` and a notebook's display; not saved).
    """

    components: list[str]
    input_ids: torch.Tensor
    batch_index: torch.Tensor
    position: torch.Tensor
    targets: dict
    contrib: dict
    logits: dict
    extreme_components: list[str] | None = None
    extremes: LogitExtremes | None = None
    tokens: list[str] | None = None
    meta: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    tokenizer: object = field(default=None, repr=False, compare=False)

    html_title = "fusedlens: direct logit attribution"

    @classmethod
    def concat(cls, names, parts: list[dict], extreme_names, tokenizer, model: dict) -> "DLAResult":
        cat = {key: torch.cat([p[key] for p in parts]) for key in ("input_ids", "batch_index", "position")}
        kinds = list(parts[0]["targets"])
        targets = {n: torch.cat([p["targets"][n] for p in parts]) for n in kinds}
        contrib = {n: torch.cat([p["contrib"][n].cpu() for p in parts], 1) for n in kinds}
        logits = {n: torch.cat([p["logits"][n].cpu() for p in parts]) for n in kinds}
        if "counterfactual" in kinds:
            targets["diff"] = targets["answer"]
            contrib["diff"] = contrib["answer"] - contrib["counterfactual"]
            logits["diff"] = logits["answer"] - logits["counterfactual"]
        extremes = None
        if extreme_names is not None:
            extremes = LogitExtremes(*(torch.cat([getattr(p["extremes"], f).cpu() for p in parts], 1)
                                       for f in ("top_ids", "top_logits", "bottom_ids", "bottom_logits")))
        tokens = None if tokenizer is None else report.token_strings(tokenizer, cat["input_ids"])
        width = max(int(p["position"].max()) + 1 for p in parts)
        sources = {}
        for head in parts[0]["sources"]:
            sources[head] = {n: torch.cat([torch.nn.functional.pad(p["sources"][head][n].cpu(),
                                                                   (0, width - p["sources"][head][n].shape[1]))
                                           for p in parts]) for n in kinds}
            if "counterfactual" in kinds:
                sources[head]["diff"] = sources[head]["answer"] - sources[head]["counterfactual"]
        return cls(list(names), **cat, targets=targets, contrib=contrib, logits=logits,
                   extreme_components=extreme_names, extremes=extremes, tokens=tokens, meta={"model": model},
                   sources=sources, tokenizer=tokenizer)

    def views(self, vocab, kind: str | None = None) -> list[dict]:
        """The page of one target kind (default: diff, else answer, else top1; report.dla.dla_views)."""
        return dla_views(self, vocab, kind or default_kind(self))

    @property
    def kinds(self) -> list[str]:
        return list(self.contrib)

    def index(self, name: str) -> int:
        try:
            return self.components.index(name)
        except ValueError:
            raise ValueError(f"component: {name!r} is not in this result") from None

    def rows_of(self, kind: str) -> torch.Tensor:
        """Indices of the rows where `kind` has a target."""
        self._check_kind(kind)
        return (self.targets[kind] >= 0).nonzero()[:, 0]

    def _check_kind(self, kind: str) -> None:
        if kind not in self.contrib:
            raise ValueError(f"kind: expected one of {self.kinds}, got {kind!r}")

    def mean(self, kind: str) -> torch.Tensor:
        """Each component's mean direct effect over the rows with a `kind` target: [components]."""
        rows = self.rows_of(kind)
        if rows.numel() == 0:
            raise ValueError(f"kind: no row has a {kind!r} target")
        return self.contrib[kind][:, rows].double().mean(1)

    def decomposition_error(self, kind: str) -> dict:
        """Largest |difference| / max(1, |logit|) over rows: embed + Σ attn.i + mlp.i + bias against the model's
        logit ("blocks"); Σ_h head.i.h + attn_bias.i against attn.i ("heads"); Σ_j neuron.i.j + mlp_bias.i
        against mlp.i ("neurons"), each where captured."""
        rows = self.rows_of(kind)
        c = self.contrib[kind][:, rows].double()
        scale = self.logits[kind][rows].double().abs().clamp(min=1)
        block = [self.index(n) for n in self.components if n == "embed" or n == "bias" or n.split(".")[0] in ("attn", "mlp")]
        out = {"blocks": float(((c[block].sum(0) - self.logits[kind][rows].double()).abs() / scale).max())}
        for sub, bias, whole in (("head", "attn_bias", "attn"), ("neuron", "mlp_bias", "mlp")):
            if f"{bias}.0" not in self.components:
                continue
            err = 0.0
            for i in range(sum(n.startswith(f"{whole}.") for n in self.components)):
                members = [j for j, n in enumerate(self.components) if n.startswith(f"{sub}.{i}.")] + [self.index(f"{bias}.{i}")]
                err = max(err, float(((c[members].sum(0) - c[self.index(f"{whole}.{i}")]).abs() / scale).max()))
            out[sub + "s"] = err
        return out

    def top(self, kind: str, n: int = 10, prefix: str | None = None) -> list[tuple[str, float]]:
        """The n components with the largest |mean effect| on `kind` (only names starting with prefix)."""
        m = self.mean(kind)
        pick = [j for j, name in enumerate(self.components) if prefix is None or name.startswith(prefix)]
        order = sorted(pick, key=lambda j: -abs(float(m[j])))[:n]
        return [(self.components[j], float(m[j])) for j in order]

    def head_matrix(self, kind: str) -> torch.Tensor:
        """Mean effect of every head on `kind`: [layers, heads]."""
        m = self.mean(kind)
        heads = [(int(n.split(".")[1]), int(n.split(".")[2]), j) for j, n in enumerate(self.components) if n.startswith("head.")]
        if not heads:
            raise ValueError("heads were not captured (components=... needs 'head')")
        out = torch.full((max(h[0] for h in heads) + 1, max(h[1] for h in heads) + 1), math.nan, dtype=torch.float64)
        for layer, head, j in heads:
            out[layer, head] = m[j]
        return out

    def block_matrix(self, kind: str) -> torch.Tensor:
        """Mean effect of every block's attention and MLP on `kind`: [layers, 2]."""
        m = self.mean(kind)
        L = sum(n.startswith("attn.") for n in self.components)
        return torch.stack([m[[self.index(f"attn.{i}") for i in range(L)]], m[[self.index(f"mlp.{i}") for i in range(L)]]], 1)

    def extreme_tokens(self, component: str, row: int, tokenizer=None) -> dict:
        """The promoted and suppressed tokens (ids, values, and texts given a tokenizer) of one component at one row."""
        if self.extremes is None:
            raise ValueError("extremes: not computed (k=0)")
        if component not in self.extreme_components:
            raise ValueError(f"component: {component!r} has no extreme tokens (only embed, attn.i, mlp.i and head.i.h do)")
        if not -self.input_ids.numel() <= row < self.input_ids.numel():
            raise ValueError(f"row: expected in [0, {self.input_ids.numel()}), got {row}")
        c = self.extreme_components.index(component)
        e = self.extremes
        out = {"promoted": list(zip(e.top_ids[c, row].tolist(), e.top_logits[c, row].tolist())),
               "suppressed": list(zip(e.bottom_ids[c, row].tolist(), e.bottom_logits[c, row].tolist()))}
        if tokenizer is not None:
            for key in ("promoted", "suppressed"):
                out[key] = [(tokenizer.decode([i]), i, v) for i, v in out[key]]
        return out

    def to_frame(self, kinds=None, components=None):
        """Long form: one row per (component, position, kind) with a target (pandas DataFrame)."""
        import pandas as pd

        kinds = self.kinds if kinds is None else list(kinds)
        for kind in kinds:
            self._check_kind(kind)
        pick = list(range(len(self.components))) if components is None else [self.index(n) for n in components]
        frames = []
        for kind in kinds:
            rows = self.rows_of(kind)
            vals = self.contrib[kind][pick][:, rows]
            frames.append(pd.DataFrame({
                "component": [self.components[j] for j in pick for _ in range(rows.numel())],
                "prompt": self.batch_index[rows].repeat(len(pick)).numpy(),
                "position": self.position[rows].repeat(len(pick)).numpy(),
                "kind": kind, "target_id": self.targets[kind][rows].repeat(len(pick)).numpy(),
                "contribution": vals.reshape(-1).numpy()}))
        return pd.concat(frames, ignore_index=True)

    def to_dict(self) -> dict:
        def floats(t):
            return [[None if v != v else round(v, 6) for v in row] for row in t.tolist()]

        out = {"format": FORMAT, **self.meta, "components": self.components, "input_ids": self.input_ids.tolist(),
               "tokens": self.tokens, "prompt": self.batch_index.tolist(), "position": self.position.tolist(),
               "targets": {k: v.tolist() for k, v in self.targets.items()},
               "logits": {k: [None if x != x else x for x in v.tolist()] for k, v in self.logits.items()},
               "contrib": {k: floats(v) for k, v in self.contrib.items()}}
        if self.sources:
            out["sources"] = {h: {k: floats(v) for k, v in by_kind.items()} for h, by_kind in self.sources.items()}
        if self.extremes is not None:
            out["extremes"] = {"components": self.extreme_components,
                               **{f: getattr(self.extremes, f).tolist() for f in
                                  ("top_ids", "top_logits", "bottom_ids", "bottom_logits")}}
        return out

    def save_json(self, path: str) -> None:
        write_json(self.to_dict(), path)
