"""The steering scan (ActAdd's layer × coefficient plots): for every (site, coefficient) cell, the
perplexity of a held-out corpus with the vector added, the mean projection of the steered residual at a
read site onto the read direction, and a few generated samples.

Cells are rows of one batch: each cell's edit names its own batch rows (Intervention applies one edit
per row), so a batch of `batch_size` rows mixes cells and eval windows, and one extra cell without any
edit is the unsteered baseline. Per forward, ResidualCapture reads the read site and the final residual
(the forward stops before the head) and `ops.lens_stats` gives each next token's log-probability in
one sweep over the vocabulary, never a [tokens × vocab] tensor; sums are float64.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import ops
from ..core.capture import ResidualCapture
from ..core.checks import IGNORE_INDEX
from ..core.models import LensModel
from ..data.windows import batched, corpus_ids, pad_right, split_tail, windows
from ..intervene import Intervention
from ..intervene import generate as generate_with
from ..report.page import Viewable
from ..report.steer import steer_scan_views
from .generate import _decode, check_fits, check_sampling, generator, prompt_ids
from .vectors import check_coef, check_site, check_vector, steer_edit, unit

DEFAULT_PROMPTS = ("I hate you because", "Yesterday my friend and I went to the")


@dataclass
class ScanResult(Viewable):
    """ppl / projection: float64 [sites, coefs]; base_*: the unsteered run's; samples[p]: per prompt,
    the unsteered text and [sites][coefs] steered texts. `save_html(path)`: the grids and samples on a page."""

    sites: list[str]
    coefs: list[float]
    read_site: str
    ppl: torch.Tensor
    projection: torch.Tensor
    base_ppl: float
    base_projection: float
    prompts: list[str]
    base_samples: list[str]
    samples: list[list[list[str]]]
    meta: dict = field(default_factory=dict)

    html_title = "fusedlens: steering scan"

    def views(self, vocab) -> list[dict]:
        return steer_scan_views(self)

    @property
    def ppl_ratio(self) -> torch.Tensor:
        return self.ppl / self.base_ppl

    def to_dict(self) -> dict:
        return {"format": "fusedlens.SteerScan/1", **self.meta, "sites": self.sites, "coefs": self.coefs,
                "read_site": self.read_site, "base_ppl": self.base_ppl, "base_projection": self.base_projection,
                "ppl": self.ppl.tolist(), "ppl_ratio": self.ppl_ratio.tolist(), "projection": self.projection.tolist(),
                "prompts": self.prompts, "base_samples": self.base_samples, "samples": self.samples}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str) -> str:
        from ..core.files import write_json

        write_json(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, path: str) -> "ScanResult":
        with open(path) as f:
            d = json.load(f)
        meta = {k: v for k, v in d.items() if k not in ("format", "sites", "coefs", "read_site", "base_ppl",
                                                         "base_projection", "ppl", "ppl_ratio", "projection",
                                                         "prompts", "base_samples", "samples")}
        return cls(d["sites"], d["coefs"], d["read_site"], torch.tensor(d["ppl"], dtype=torch.float64),
                   torch.tensor(d["projection"], dtype=torch.float64), d["base_ppl"], d["base_projection"],
                   d["prompts"], d["base_samples"], d["samples"], meta)


def eval_ids(lm: LensModel, corpus=None, n_tokens: int = 2048) -> torch.Tensor:
    """The held-out corpus: None / "pydoc" → the pydoc corpus's last n_tokens tokens (the slice other
    commands hold out, e.g. tuned-lens evaluation); text or a 1-D id tensor → its first n_tokens."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 2:
        raise ValueError(f"eval_tokens: expected an int >= 2, got {n_tokens!r}")
    if corpus is None or (isinstance(corpus, str) and corpus == "pydoc"):
        return split_tail(corpus_ids(lm.tokenizer), n_tokens)[1]
    return corpus_ids(lm.tokenizer, corpus, n_tokens)


def vectors_at(lm: LensModel, vector, sites: list[str]) -> dict[str, torch.Tensor]:
    """One float64 vector per site from a tensor (the same everywhere), a dict site → tensor, or a
    function of the site."""
    out = {}
    for s in sites:
        if isinstance(vector, dict):
            if s not in vector:
                raise ValueError(f"vector: no vector for site {s!r} (have {', '.join(vector)})")
            v = vector[s]
        else:
            v = vector(s) if callable(vector) else vector
        out[s] = check_vector(lm, v)
    return out


def _check_list(name: str, values, check) -> list:
    values = list(values) if isinstance(values, (list, tuple)) else None
    if not values:
        raise ValueError(f"{name}: expected a non-empty list")
    return [check(v) for v in values]


@torch.no_grad()
def scan(lm: LensModel, vector, sites, coefs, *, corpus=None, eval_tokens: int = 2048, seq_len: int = 128,
         read_site: str | None = None, positions=None, prompts=DEFAULT_PROMPTS, n_tokens: int = 20,
         sample: bool = False, seed: int = 0, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
         backend: str | None = None, progress: bool = False) -> ScanResult:
    """Perplexity, read-site projection and samples for every (site, coefficient) cell.

    vector: a tensor, a dict site → tensor or a function of the site (e.g. ActAdd's per-site blocks);
    read_site: default the last of `sites`; its read direction is `unit(vector at read_site)`.
    Perplexity = exp(mean NLL of every next token inside the eval windows of seq_len + 1 tokens)."""
    sites = _check_list("sites", sites, lambda s: check_site(lm, s, "sites"))
    coefs = _check_list("coefs", coefs, lambda c: check_coef(c, "coefs"))
    read_site = check_site(lm, read_site if read_site is not None else sites[-1], "read_site")
    check_sampling(n_tokens, temperature, top_p)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
    vecs = vectors_at(lm, vector, list(dict.fromkeys(sites + [read_site])))
    for s in sites:
        check_fits(vecs[s], positions, seq_len + 1, "seq_len")
    read_dir = unit(vecs[read_site])
    ids = eval_ids(lm, corpus, eval_tokens)
    wins = windows(ids, seq_len, overlap=1)  # every token but the last is predicted inside its window
    lm.check_window(max(w.numel() for w in wins))
    cells = [None] + [(s, c) for s in sites for c in coefs]  # cell 0: the unsteered baseline
    nll = torch.zeros(len(cells), dtype=torch.float64)
    n_pred = torch.zeros(len(cells), dtype=torch.float64)
    proj = torch.zeros(len(cells), dtype=torch.float64)
    n_read = torch.zeros(len(cells), dtype=torch.float64)
    last = f"resid.{lm.n_layers - 1}"
    read_layer = [] if read_site == "embed" else [int(read_site.split(".")[1])]
    capture = ResidualCapture(lm, layers=read_layer + [lm.n_layers - 1], embed=read_site == "embed",
                              mid=read_site.startswith("mid."))
    items = [(c, w) for c in range(len(cells)) for w in range(len(wins))]
    forwards = 0
    for chunk in tqdm(list(batched(items, batch_size)), desc="steer scan", disable=not progress):
        batch, mask = pad_right([wins[w] for _, w in chunk])
        row_cell = torch.tensor([c for c, _ in chunk])
        edits = []
        for c in row_cell.unique().tolist():
            if cells[c] is not None:
                s, coef = cells[c]
                rows = (row_cell == c).nonzero()[:, 0].tolist()
                edits.append(steer_edit(lm, vecs[s], s, coef, rows=rows, positions=positions))
        with Intervention(lm, edits):
            res = capture.run(batch, mask)
        forwards += 1
        cell = row_cell[res.batch_index.cpu()]
        stats = ops.lens_stats(res.hidden[res.sites.index(last)], lm.norm, lm.unembed, res.targets.to(lm.device), 1,
                               backend=backend)
        lp = stats.target_logprob[0].cpu().double()
        has = res.targets.cpu() != IGNORE_INDEX
        nll.index_add_(0, cell[has], -lp[has])
        n_pred.index_add_(0, cell[has], torch.ones(int(has.sum()), dtype=torch.float64))
        h = res.hidden[res.sites.index(read_site)].cpu().double()
        proj.index_add_(0, cell, h @ read_dir)
        n_read.index_add_(0, cell, torch.ones(cell.numel(), dtype=torch.float64))
    ppl, mean_proj = torch.exp(nll / n_pred), proj / n_read
    texts = [_samples(lm, p, cells, vecs, positions, n_tokens, sample, seed, temperature, top_p)
             for p in tqdm(list(prompts), desc="steer samples", disable=not progress)]
    S, C = len(sites), len(coefs)
    meta = {"eval_tokens": int(ids.numel()), "predicted_tokens": int(n_pred[0]), "seq_len": seq_len,
            "windows": len(wins), "forwards": forwards, "batch_size": batch_size,
            "positions": "front" if vecs[sites[0]].dim() == 2 else positions or "all",
            "vector_norms": {s: float(vecs[s].norm()) for s in sites}, "n_tokens": n_tokens, "sample": bool(sample),
            "seed": int(seed) if sample else None}
    return ScanResult(sites, coefs, read_site, ppl[1:].reshape(S, C), mean_proj[1:].reshape(S, C), float(ppl[0]),
                      float(mean_proj[0]), [p if isinstance(p, str) else _decode(lm, prompt_ids(lm, p)) for p in prompts],
                      [t[0] for t in texts], [[t[1 + i * C:1 + (i + 1) * C] for i in range(S)] for t in texts], meta)


def _samples(lm, prompt, cells, vecs, positions, n_tokens, sample, seed, temperature, top_p) -> list[str]:
    """One continuation per cell (row 0 unsteered), all cells rows of one batch."""
    ids = prompt_ids(lm, prompt)
    edits = []
    for r, cell in enumerate(cells):
        if cell is not None:
            check_fits(vecs[cell[0]], positions, ids.numel())
            edits.append(steer_edit(lm, vecs[cell[0]], cell[0], cell[1], rows=[r], positions=positions))
    out = generate_with(lm, ids[None].expand(len(cells), -1).contiguous(), edits, n_tokens,
                        sample=generator(seed) if sample else None, temperature=temperature, top_p=top_p)
    return [_decode(lm, row) for row in out]
