"""Linear probes of every layer's residual stream over a corpus, in one streaming pass.

The experiment (the post *LLMs linearly represent the accuracy of their next-token predictions*): let x_t be a layer's residual at token t and y_t a per-token
target, e.g. the final logit the model gave the correct next token; fit y_{t+K} ≈ wᵀx_t + b
by ridge regression, per layer and lag K (K = −1: how much the model expected the token
it is reading), and report held-out R² (classes: accuracy and macro-F1). Each sequence
is one forward: the captured residuals of all sites go straight into the accumulators
(fp32 batch Grams, float64 totals), the built-in targets come from the same forward's
final residual through the fused lens op (no logits tensor), lags are index shifts
inside the sequence, and user targets come from a file aligned to its sequences
(user_targets.py). Training sequences are split into k folds (round robin) to choose
the penalty; the held-out sequences follow them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core.backends import pick_backend
from ..core.capture import ResidualCapture, check_layers
from ..core.models import LensModel, load_model
from ..data.windows import corpus_ids, windows
from ..report.page import Viewable
from ..report.probe import probe_views
from .classes import ClassScores
from .folds import Folds
from .rows import check_lags, lagged, parse_position_ranges, position_mask
from .solve import DEFAULT_ALPHAS, check_alphas, default_rcond, weights_at
from .targets import TargetMaker
from .user_targets import ParsedTargets, TargetFile, parse_target_file, read_target_file


@dataclass
class ProbeResult(Viewable):
    """Per-site fit summaries of the numeric targets ([site][target] dicts from solve.cross_validate_parts),
    the class targets' held-out scores, and the run's facts. Every target name carries its lag:
    'logit@lag-1' is the logit that position t−1 gave the token at t, probed from x_t. `save_html(path)`
    writes the interactive page (R² per site per target and lag; a notebook shows it inline)."""

    sites: list[str]
    targets: list[str]
    fits: list[list[dict]]
    n_layers: int
    meta: dict = field(default_factory=dict)
    classes: dict = field(default_factory=dict)  # 'label@lag0' -> {"classes": [...], "sites": [per-site dict]}

    html_title = "fusedlens: ridge probes"

    def views(self, vocab) -> list[dict]:
        return probe_views(self)

    def rows(self) -> list[dict]:
        return [{"site": site, "targets": dict(zip(self.targets, per_target)),
                 **({"classes": {name: c["sites"][i] for name, c in self.classes.items()}} if self.classes else {})}
                for i, (site, per_target) in enumerate(zip(self.sites, self.fits))]

    def claim(self, target: str | None = None, threshold: float = 0.6) -> dict:
        """'Layers in the second half of the model, except the last, have held-out R² > threshold.'"""
        if not self.targets:
            raise ValueError("claim: the run has no numeric target")
        target = target or self.targets[0]
        if target not in self.targets:
            raise ValueError(f"target: expected one of {self.targets}, got {target!r}")
        j = self.targets.index(target)
        half = [(site, fit[j]["r2_heldout"]) for site, fit in zip(self.sites, self.fits)
                if site.startswith("resid.") and self.n_layers // 2 <= int(site.split(".")[1]) < self.n_layers - 1]
        vals = [v for _, v in half if v is not None]
        return {"statement": f"resid.{self.n_layers // 2}..resid.{self.n_layers - 2} have held-out R² > {threshold} "
                             f"for target {target!r}",
                "target": target, "sites": [s for s, _ in half], "min_r2_heldout": min(vals) if vals else None,
                "holds": bool(vals) and len(vals) == len(half) and min(vals) > threshold}

    def claims(self, threshold: float = 0.6) -> list[dict]:
        """The seed's sentence for the first target at every lag of the run."""
        if not self.targets:
            return []
        base = self.targets[0].rsplit("@lag", 1)[0]
        return [self.claim(t, threshold) for t in self.targets if t.rsplit("@lag", 1)[0] == base]


@dataclass
class _Sequence:
    ids: torch.Tensor  # the tokens fed to the model
    rows: int  # its first `rows` positions are probe rows (a corpus window's last token is only a target)
    heldout: bool
    start: int | None  # corpus position of its first row (None: a target file's sequence)
    index: int | None  # its line in the target file


def _corpus_sequences(ids, train_tokens, heldout_tokens, seq_len) -> list[_Sequence]:
    out, start = [], 0
    for held, part in ((False, ids[:train_tokens + 1]), (True, ids[train_tokens:])):
        if held and not heldout_tokens:
            break
        for w in windows(part, seq_len, overlap=1):
            out.append(_Sequence(w, w.numel() - 1, held, start, None))
            start += w.numel() - 1
    return out


def _file_sequences(tf: TargetFile, train_tokens, heldout_tokens, seq_len) -> list[_Sequence]:
    """The file's sequences in order: training ones until train_tokens rows, then held-out ones until heldout_tokens."""
    out, seen = [], [0, 0]
    for i, s in enumerate(tf.sequences):
        if s.numel() > seq_len:
            raise ValueError(f"{tf.source}: sequence {i} has {s.numel()} tokens, more than seq_len {seq_len}")
        held = seen[0] >= train_tokens
        if held and (not heldout_tokens or seen[1] >= heldout_tokens):
            break
        out.append(_Sequence(s, s.numel(), held, None, i))
        seen[held] += s.numel()
    if seen[0] < train_tokens or seen[1] < heldout_tokens:
        raise ValueError(f"{tf.source}: {tf.n_tokens()} tokens in {len(tf.sequences)} sequences, need "
                         f"{train_tokens} training + {heldout_tokens} held-out tokens")
    return out


class _Columns:
    """The target matrix of a batch: base columns (built-ins, extras, the file's) → every lag, one-hot classes."""

    def __init__(self, base_names: list[str], classes: dict[str, list[str]], lags: list[int]):
        self.base_names, self.lags = base_names, lags
        self.names, self.numeric, self.class_groups = [], [], {}
        for lag in lags:
            for name in base_names:
                label = f"{name}@lag{lag}"
                if name in classes:
                    cols = list(range(len(self.names), len(self.names) + len(classes[name])))
                    self.names += [f"{name}={c}@lag{lag}" for c in classes[name]]
                    self.class_groups[label] = (cols, classes[name])
                else:
                    self.numeric.append(len(self.names))
                    self.names.append(label)
        self.classes = classes

    def __call__(self, base: torch.Tensor, position, length, keep_rows) -> torch.Tensor:
        parts = []
        for lag in self.lags:
            shifted = lagged(base, position, length, lag)
            for j, name in enumerate(self.base_names):
                v = shifted[:, j]
                if name in self.classes:
                    onehot = torch.nn.functional.one_hot(v.nan_to_num(0).long(), len(self.classes[name])).float()
                    parts.append(torch.where(torch.isnan(v)[:, None], float("nan"), onehot))
                else:
                    parts.append(v[:, None])
        y = torch.cat(parts, 1)
        y[~keep_rows] = float("nan")
        return y


def fit_probes(lm: LensModel | None = None, corpus=None, *, train_tokens: int = 24_000, heldout_tokens: int = 8_000,
          seq_len: int = 512, layers=None, embed: bool = True, targets=("logit",), extra_targets=None,
          user_targets: TargetFile | ParsedTargets | str | None = None, lags=(0,), positions: str | None = None,
          where: str | None = None, folds: int = 5, alphas=DEFAULT_ALPHAS, backend: str | None = None,
          progress: bool = True) -> ProbeResult:
    """Fit ridge probes of every (target, lag) on every captured site over train_tokens, report on the next
    heldout_tokens.

    lm: a LensModel (default: the embedded SmolLM2-135M); corpus: text or token ids
    (default: pydoc_data.topics), cut into windows of seq_len; user_targets: a TargetFile
    or the path of a JSONL one (user_targets.py): its sequences are the corpus and its
    targets are probed beside `targets`; layers: block indices to probe (default all),
    plus the embedding output if `embed`; targets: names from TARGETS; extra_targets:
    {name: tensor [train + held-out tokens (, k)] indexed by corpus position, or
    fn(Residuals) -> one value (or row) per real token of the batch}; lags: K per target
    (x_t → y_{t+K} within the sequence; −1 is the post's experiment as written); positions: rows kept
    (rows.parse_position_ranges: '0', '-1', '5-', ...); where: keep only rows where this file
    target has a value; folds: k of the k-fold choice of α among `alphas` (λ = α·tr(Gc)/d);
    backend: of the accumulation kernel.
    """
    for name, v, low in (("train_tokens", train_tokens, 2 * folds), ("heldout_tokens", heldout_tokens, 0),
                         ("seq_len", seq_len, 1), ("folds", folds, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    alphas = check_alphas(alphas)
    lags = check_lags(lags)
    ranges = parse_position_ranges(positions)
    t_start = time.perf_counter()
    if isinstance(user_targets, str):  # checked before the model loads
        user_targets = parse_target_file(user_targets)
    lm = lm or load_model()
    if isinstance(user_targets, ParsedTargets):
        user_targets = read_target_file(user_targets, lm.tokenizer)
    if user_targets is not None:
        if corpus is not None:
            raise ValueError("corpus: a target file brings its own sequences; pass one or the other")
        seqs = _file_sequences(user_targets, train_tokens, heldout_tokens, seq_len)
        file_names, classes = user_targets.names, dict(user_targets.classes)
    else:
        if corpus is not None and isinstance(corpus, str) and lm.tokenizer is None:
            raise ValueError("corpus: text needs a model with a tokenizer; pass token ids instead")
        n_ids = train_tokens + heldout_tokens + 1  # every row needs its next token
        ids = corpus_ids(lm.tokenizer, corpus, None)
        if ids.numel() < n_ids:
            raise ValueError(f"corpus: {ids.numel()} tokens, need {n_ids} (train + held-out + 1)")
        seqs = _corpus_sequences(ids[:n_ids], train_tokens, heldout_tokens, seq_len)
        file_names, classes = [], {}
    if where is not None and where not in file_names:
        raise ValueError(f"where: expected the name of a target of the target file ({file_names}), got {where!r}")
    lm.check_window(max(s.ids.numel() for s in seqs))
    longest = max(s.rows for s in seqs)
    if any(abs(k) >= longest for k in lags):
        raise ValueError(f"lags: {lags} leave no rows in sequences of at most {longest} rows")
    make_targets = TargetMaker(lm, list(targets), extra_targets,
                               None if user_targets is not None else train_tokens + heldout_tokens)
    n = lm.n_layers
    wanted = list(range(n)) if layers is None else check_layers(layers, n)
    capture = ResidualCapture(lm, layers=sorted(set(wanted) | {n - 1}), embed=embed)  # the last block gives targets
    sites = (["embed"] if embed else []) + [f"resid.{i}" for i in wanted]
    site_index = torch.tensor([capture.sites.index(s) for s in sites])
    n_train_seqs = sum(1 for s in seqs if not s.heldout)
    if n_train_seqs < folds:
        raise ValueError(f"folds: {folds} folds need at least {folds} training sequences of seq_len {seq_len}, "
                         f"got {n_train_seqs}")

    columns: _Columns | None = None
    buckets: Folds | None = None
    scores: dict[str, ClassScores] = {}
    timing = {"forward_s": 0.0, "targets_s": 0.0, "accumulate_s": 0.0}
    for i, seq in enumerate(tqdm(seqs, desc="probe", unit="sequence", disable=not progress)):
        t0 = time.perf_counter()
        res = capture.run(seq.ids[None])
        t1 = time.perf_counter()
        keep = res.position < seq.rows
        rows = int(keep.sum())
        stream_pos = None if seq.start is None else seq.start + torch.arange(rows)
        base = make_targets(res, keep, stream_pos)
        file_cols = [user_targets.values[nm][seq.index][:rows].float() for nm in file_names]
        if file_cols:
            base = torch.cat([base, torch.stack(file_cols, 1).to(base.device)], 1)
        if columns is None:
            columns = _Columns(make_targets.names + file_names, classes, lags)
            if not columns.names:
                raise ValueError("targets: nothing to probe")
        position, length = res.position[:rows].to(base.device), torch.full((rows,), rows, device=base.device)
        selected = position_mask(ranges, position, length)
        if where is not None:
            selected &= ~torch.isnan(base[:, len(make_targets.names) + file_names.index(where)])
        y = columns(base, position, length, selected)
        t2 = time.perf_counter()
        if buckets is None:
            buckets = Folds(folds, len(sites), lm.d_model, y.shape[1], backend=backend, device=res.hidden.device)
        x = res.hidden if len(sites) == len(capture.sites) else res.hidden.index_select(0, site_index.to(y.device))
        x = x[:, :rows]  # one sequence: its rows are a prefix
        if seq.heldout and columns.class_groups and not scores:
            scores = _fit_class_weights(buckets, columns, alphas, len(sites))
        buckets.add(Folds.after_training(i, folds, seq.heldout), x, y)
        for sc in scores.values():
            sc.update(x, y)
        timing["forward_s"] += t1 - t0
        timing["targets_s"] += t2 - t1
        timing["accumulate_s"] += time.perf_counter() - t2
    if not any(buckets.rows(b, j) for b in range(folds + 1) for j in range(len(columns.names))):
        raise ValueError(f"positions / where: the selection ({positions!r}, {where!r}) has no rows")
    if columns.class_groups and not scores:  # no held-out part: fitted all the same, for the summary
        scores = _fit_class_weights(buckets, columns, alphas, len(sites))
    t3 = time.perf_counter()
    fits = buckets.fit(alphas, heldout=bool(heldout_tokens), names=columns.names, only=columns.numeric)
    timing["solve_s"] = time.perf_counter() - t3
    timing["total_s"] = time.perf_counter() - t_start
    meta = {"model": lm.describe(), "train_tokens": train_tokens, "heldout_tokens": heldout_tokens,
            "seq_len": seq_len, "folds": folds, "alphas": [float(a) for a in alphas], "lags": lags,
            "positions": positions, "where": where,
            "target_file": user_targets.source if user_targets is not None else None,
            "backend": backend or pick_backend(lm.device, None), "timing": timing}
    numeric = [columns.names[j] for j in columns.numeric]
    class_results = {name: {"classes": sc.classes, "sites": [sc.summary(s) for s in range(len(sites))]}
                     for name, sc in scores.items()}
    return ProbeResult(sites, numeric, [[f[j] for j in columns.numeric] for f in fits], n, meta, class_results)


def _fit_class_weights(buckets: Folds, columns: _Columns, alphas, n_sites: int) -> dict[str, ClassScores]:
    """Every class target's one-hot ridge at the α its summed validation SSE prefers, from the training folds."""
    groups = list(columns.class_groups.items())
    cols_all = [j for _, (cols, _) in groups for j in cols]
    fits = buckets.fit(alphas, heldout=False, names=columns.names, only=cols_all,
                       shared_alpha=[cols for _, (cols, _) in groups])
    rcond = default_rcond(buckets.roundoff())
    out = {}
    for label, (cols, classes) in groups:
        sc = ClassScores(label, classes, cols, n_sites)
        ws, bs, chosen = [], [], []
        for s in range(n_sites):
            alpha = fits[s][cols[0]]["alpha"]
            train = buckets.training_moments(s, cols)
            w, b = weights_at(train, alpha, rcond)
            ws.append(w)
            bs.append(b)
            chosen.append(alpha)
        n_train = (train.mean_y * train.n).round().long()  # per class: Σ one-hot over the training rows
        sc.set_weights(torch.stack(ws), torch.stack(bs), chosen, n_train)
        out[label] = sc
    return out
