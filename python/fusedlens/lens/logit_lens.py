"""LogitLens: a model and a batch of text or token ids → per-layer, per-token lens statistics.

Every input form becomes a list of 1-D token sequences (real tokens only), each
cut into pieces of at most `seq_len`; pieces are batched `batch_size` at a time,
right-padded under an attention mask. Right padding keeps every real token's
position and causal context as if it ran alone, on any model. One forward per
batch feeds `ops.lens_stats`, which decodes all captured sites of the batch at
once; the last site is always the final block's output, the reference for KL and
agreement.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import ops, report
from ..core.backends import COMPUTE_MODES
from ..core.capture import ResidualCapture
from ..core.files import write_json
from ..core.models import LensModel
from ..data.prompts import input_sequences
from ..data.windows import pad_right
from ..ops.lens_stats import check_k
from ..ops.stats import LensStats
from ..report.page import Viewable
from .aggregate import per_layer_summary

FORMAT = "fusedlens.LensResult/1"


def _encode(t: torch.Tensor | None):
    """Tensor → JSON-able dict; NaN becomes null (float32 values round-trip exactly through a double)."""
    if t is None:
        return None
    data = t.detach().cpu().reshape(-1)
    values = data.tolist()
    if t.is_floating_point():
        values = [None if v != v else v for v in values]
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": values}


def _decode(d) -> torch.Tensor | None:
    if d is None:
        return None
    dtype = getattr(torch, d["dtype"])
    values = d["data"]
    if dtype.is_floating_point:
        values = [float("nan") if v is None else v for v in values]
    return torch.tensor(values, dtype=dtype).reshape(d["shape"])


@dataclass
class LensResult(Viewable):
    """Lens statistics of every real token of a run, in input order.

    stats: `LensStats` of shape [sites, tokens] (`prediction_depth` [tokens]).
    input_ids / targets / batch_index / position: [tokens]; targets are the next
    token (IGNORE_INDEX, -100, at each sequence's last token); batch_index numbers the
    sequences after cutting to seq_len (it is the text's or row's index when
    nothing was cut); position counts from 0 within each sequence. tokenizer: the model's, when the
    run that made it had one (token strings in `save_html` and a notebook's display; not saved).
    """

    sites: list[str]
    stats: LensStats
    input_ids: torch.Tensor
    targets: torch.Tensor
    batch_index: torch.Tensor
    position: torch.Tensor
    lens: str = "logit lens"
    tokenizer: object = field(default=None, repr=False, compare=False)

    html_title = "fusedlens: lens"

    def views(self, vocab) -> list[dict]:
        return [dict(report.lens_view({self.lens: self}, vocab), title=f"{self.lens}: tokens × sites")]

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def n_sequences(self) -> int:
        return int(self.batch_index.max()) + 1 if self.n_tokens else 0

    @property
    def mean_prediction_depth(self) -> float:
        """Mean over tokens of the site index from which top-1 stays the final top-1 (a per-token measure)."""
        return float(self.stats.prediction_depth.double().mean())

    def summary(self) -> list[dict]:
        """Per-site aggregates over all tokens; see `lens.aggregate.per_layer_summary`."""
        return per_layer_summary(self.stats, self.sites, self.targets)

    def tokens(self, tokenizer) -> list[str]:
        """The text of each row's input token."""
        return report.token_strings(tokenizer, self.input_ids)

    def sequence(self, i: int) -> "LensResult":
        """The rows of sequence i alone (batch_index keeps its value)."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_sequences:
            raise ValueError(f"seq: expected a sequence index in [0, {self.n_sequences}), got {i!r}")
        rows = (self.batch_index == i).nonzero()[:, 0]
        return LensResult(sites=list(self.sites), stats=self.stats.select(rows), input_ids=self.input_ids[rows],
                          targets=self.targets[rows], batch_index=self.batch_index[rows], position=self.position[rows],
                          lens=self.lens, tokenizer=self.tokenizer)

    def to_dict(self) -> dict:
        """Every tensor, loadable by `from_dict`; the per-site summary rides along for readers."""
        return {"format": FORMAT, "sites": list(self.sites),
                **{name: _encode(getattr(self, name)) for name in ("input_ids", "targets", "batch_index", "position")},
                "stats": {name: _encode(t) for name, t in self.stats.items()},
                "summary": self.summary(), "mean_prediction_depth": self.mean_prediction_depth}

    @classmethod
    def from_dict(cls, d: dict) -> "LensResult":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"d: not a saved LensResult (expected format {FORMAT!r})")
        return cls(sites=list(d["sites"]), stats=LensStats(**{k: _decode(v) for k, v in d["stats"].items()}),
                   **{name: _decode(d[name]) for name in ("input_ids", "targets", "batch_index", "position")})

    def save_json(self, path: str) -> None:
        write_json(self.to_dict(), path)

    @classmethod
    def load_json(cls, path: str) -> "LensResult":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _check_layers(layers) -> list[int] | None:
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) \
            or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in layers):
        raise ValueError(f"layers: expected None or a list of block indices, got {layers!r}")
    return [int(i) for i in layers]


class LogitLens:
    """Decode residuals through the model's own final norm and unembedding.

    layers: blocks to read (None = all; the last block is always added, as the
    final site); mid / embed: also read the mid-block and embedding sites; k: top-k
    size (1..32); backend / compute / dtype: as in `ops.lens_stats` (compute
    "auto" multiplies in bf16 for a bf16 model, as its own head does; dtype is the
    compute dtype of the `torch` backend); translate: maps the captured residuals
    [sites, tokens, d] before they are decoded, e.g. a tuned lens'
    `lambda h: tuned.translate_sites(h, lens.sites)` (None: the logit lens itself).
    """

    def __init__(self, lm: LensModel, layers: Sequence[int] | None = None, mid: bool = False, embed: bool = True,
                 k: int = 5, backend: str | None = None, compute: str = "auto", dtype: torch.dtype = torch.float32,
                 translate=None):
        if not isinstance(lm, LensModel):
            raise ValueError(f"lm: expected a LensModel, got {type(lm).__name__}")
        layers = _check_layers(layers)
        if layers is not None:
            layers = layers + [lm.n_layers - 1] if layers else layers  # empty stays empty: capture names the error
        k = check_k(k, lm.vocab_size)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
        if compute not in ("auto",) + COMPUTE_MODES:
            raise ValueError(f"compute: expected 'auto' or one of {COMPUTE_MODES}, got {compute!r}")
        if translate is not None and not callable(translate):
            raise ValueError(f"translate: expected a callable or None, got {type(translate).__name__}")
        self.lm, self.k, self.dtype, self.compute, self.translate = lm, k, dtype, compute, translate
        self.backend = ops.pick_backend(lm.device, backend)
        self.capture = ResidualCapture(lm, layers=layers, embed=embed, mid=mid)

    @property
    def sites(self) -> list[str]:
        return list(self.capture.sites)

    def sequences(self, inputs, attention_mask: torch.Tensor | None = None, seq_len: int = 512) -> list[torch.Tensor]:
        """Inputs (str, list of str, int ids [T] or [B, T] with a mask) → 1-D id sequences of at most seq_len."""
        return input_sequences(self.lm, inputs, attention_mask, seq_len)

    @torch.no_grad()
    def run(self, inputs, *, attention_mask: torch.Tensor | None = None, seq_len: int = 512, batch_size: int = 8,
            progress: bool = False) -> LensResult:
        """Lens statistics of every real token of `inputs`, as a LensResult."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        seqs = self.sequences(inputs, attention_mask, seq_len)
        parts, fields = [], {"input_ids": [], "targets": [], "batch_index": [], "position": []}
        with tqdm(total=sum(s.numel() for s in seqs), unit="tok", desc="logit lens", disable=not progress) as bar:
            for first in range(0, len(seqs), batch_size):
                group = seqs[first:first + batch_size]
                ids, mask = pad_right(group)
                res = self.capture.run(ids, mask)
                targets = res.targets.to(res.hidden.device)
                hidden = res.hidden if self.translate is None else self.translate(res.hidden)
                stats = ops.lens_stats(hidden, self.lm.norm, self.lm.unembed, targets, self.k,
                                       backend=self.backend, compute=self.compute, dtype=self.dtype)
                parts.append(stats.to("cpu"))
                for name, t in (("input_ids", res.input_ids), ("targets", res.targets),
                                ("batch_index", res.batch_index + first), ("position", res.position)):
                    fields[name].append(t.cpu())
                bar.update(res.input_ids.numel())
        return LensResult(sites=self.sites, stats=LensStats.cat(parts), **{k: torch.cat(v) for k, v in fields.items()},
                          lens="logit lens" if self.translate is None else "tuned lens",
                          tokenizer=getattr(self.lm, "tokenizer", None))


class LensComparison(Viewable):
    """Lens results of the same tokens side by side (e.g. {"logit lens": r, "tuned lens": t}): one grid each,
    a token's curves from all of them; `save_html` and a notebook's display like a LensResult's."""

    html_title = "fusedlens: lenses side by side"

    def __init__(self, results: dict):
        if not isinstance(results, dict) or not results or not all(isinstance(r, LensResult) for r in results.values()):
            raise ValueError("results: expected a dict of name -> LensResult")
        self.results = dict(results)
        self.tokenizer = next((r.tokenizer for r in results.values() if r.tokenizer is not None), None)

    def views(self, vocab) -> list[dict]:
        return [dict(report.lens_view(self.results, vocab), title=" and ".join(self.results) + ": tokens × sites")]
