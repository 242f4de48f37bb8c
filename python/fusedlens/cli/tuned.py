"""`fusedlens tuned train|eval`: train a tuned lens on the pydoc corpus and compare it with the logit lens.

The corpus is the embedded pydoc text; its last --eval-tokens tokens are held out from
training and `eval` reads only those (the first --tokens of them). Each writes report.html where it writes
its other files: train the loss curve, eval the per-site curves (and the loss curve of the lens' training).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..core.backends import BACKENDS
from ..core.checks import check_output_dir
from ..core.backends import BACKEND_HELP
from ..core.fields import option
from ..core.models import ModelOptions
from ..tuned.train import TrainConfig
from .options import add_arguments, from_args, out_default

HELP = "train a tuned lens / compare it with the logit lens on held-out text"
DEFAULT_LENS = out_default("tuned")


@dataclass(kw_only=True)
class CorpusOptions(ModelOptions):
    eval_tokens: int = option(8192, "tokens at the corpus end held out from training")
    progress: bool = option(True, "no progress bar")


@dataclass(kw_only=True)
class TrainCommand(CorpusOptions):
    out: str = option(DEFAULT_LENS, "checkpoint folder, resumed if present")
    mid: bool = option(False, "also translators at the mid-layer sites")
    bias: bool = option(True, "translators without the bias b")
    overwrite: bool = option(False, "replace a trained lens in --out that has no training state to resume")


@dataclass(kw_only=True)
class EvalCommand(CorpusOptions):
    lens: str = option(DEFAULT_LENS, "tuned lens folder")
    ignore_unembed_hash: bool = option(False, "read a tuned lens trained for another unembedding (its unembed_hash differs)")
    tokens: int = option(2048, "held-out tokens to evaluate")
    seq_len: int = option(256, "tokens per sequence")
    out: str | None = option(None, "where to write tuned_eval.json/png and report.html (default: the lens folder)")
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)


def _split(lm, eval_tokens: int):
    from ..data.windows import corpus_ids, split_tail

    return split_tail(corpus_ids(lm.tokenizer), eval_tokens)


def train_main(args) -> int:
    import os

    from ..report.page import REPORT, write_page
    from ..report.tuned import tuned_train_views
    from ..tuned.lens import TunedLens
    from ..tuned.train import check_out_dir, read_state, train

    cmd, cfg = from_args(TrainCommand, args), from_args(TrainConfig, args)
    if cmd.eval_tokens < 1:
        raise ValueError(f"eval_tokens: expected >= 1, got {cmd.eval_tokens}")
    check_out_dir(cmd.out, cmd.overwrite)
    read_state(cmd.out, cfg)  # resumable: of the same recipe, readable, plain data (before the model loads)
    check_output_dir("out", cmd.out, "tuned")
    lm = cmd.load()
    train_ids, _ = _split(lm, cmd.eval_tokens)
    lens = TunedLens.from_model(lm, mid=cmd.mid, bias=cmd.bias)
    history = train(lm, lens, train_ids, cfg, out_dir=cmd.out, progress=cmd.progress, overwrite=cmd.overwrite)
    print(json.dumps({"out": cmd.out, "steps": len(history["loss"]), "tokens": history["tokens"],
                      "train_seconds": round(history["seconds"], 1), "first_loss": history["loss"][0],
                      "last_loss": history["loss"][-1], "compute": history.get("compute")}))
    html = write_page(os.path.join(cmd.out, REPORT), "fusedlens tuned lens: training", tuned_train_views(history),
                      meta={"model": lm.describe()["model"], "sites": len(lens.sites)})
    print(f"wrote {html} (the loss curve; open it in a browser)")
    return 0


def eval_main(args) -> int:
    import os

    from ..report.page import REPORT, Vocab, write_page
    from ..report.tuned import format_tuned_table, tuned_train_views, write_tuned_report
    from ..tuned.evaluate import evaluate
    from ..tuned.lens import TunedLens

    from ..tuned.lens import read_config

    cmd = from_args(EvalCommand, args)
    for name in ("eval_tokens", "tokens", "seq_len"):
        if getattr(cmd, name) < 1:
            raise ValueError(f"{name}: expected >= 1, got {getattr(cmd, name)}")
    read_config(cmd.lens, "lens")  # the lens folder exists and its config reads, before the model loads
    check_output_dir("out", cmd.out or cmd.lens, "tuned")
    lm = cmd.load()
    lens = TunedLens.load(cmd.lens, lm, check_unembed=not cmd.ignore_unembed_hash)
    _, held_out = _split(lm, cmd.eval_tokens)
    ids = held_out[:cmd.tokens]
    rows = evaluate(lm, lens, ids, seq_len=cmd.seq_len, backend=cmd.backend, progress=cmd.progress)
    print(format_tuned_table(rows))
    lens_sites = rows[:-1]
    better = sum(r["kl_bits_tuned"] < r["kl_bits_logit"] for r in lens_sites)
    print(f"\ntuned lens has lower held-out KL than the logit lens at {better} of {len(lens_sites)} sites")
    meta = {"model": lm.describe(), "lens": cmd.lens, "held_out_tokens": ids.numel(), "seq_len": cmd.seq_len}
    paths = write_tuned_report(rows, cmd.out or cmd.lens, meta, f"logit vs tuned lens, {ids.numel()} held-out tokens")
    rows.meta.update(model=lm.describe()["model"], lens=cmd.lens)
    history = _history(cmd.lens)
    vocab = Vocab(lm.tokenizer)
    html = write_page(os.path.join(cmd.out or cmd.lens, REPORT), rows.html_title,
                      rows.views(vocab) + _grids(lm, lens, ids[:GRID_TOKENS], cmd.seq_len).views(vocab)
                      + (tuned_train_views(history) if history else []), vocab, meta=rows.meta)
    print("wrote " + ", ".join(paths) + f" and {html} (open it in a browser)")
    return 0


GRID_TOKENS = 256  # the held-out tokens whose grids the page shows, logit and tuned lens side by side


def _grids(lm, lens, ids, seq_len: int):
    """Both lenses over the same held-out tokens, to explore side by side (the same sites as the lens)."""
    from ..lens import LensComparison, LogitLens
    from ..report.lens import TOPK_SHOWN

    mid = any(s.startswith("mid.") for s in lens.sites)
    logit = LogitLens(lm, k=TOPK_SHOWN, mid=mid).run(ids, seq_len=seq_len)
    tuned = LogitLens(lm, k=TOPK_SHOWN, mid=mid, translate=lambda h: lens.translate_sites(h, logit.sites)).run(ids, seq_len=seq_len)
    return LensComparison({"logit lens": logit, "tuned lens": tuned})


def _history(lens_dir: str) -> dict | None:
    """The training history kept in the lens folder's training state, if it has one (a lens from elsewhere
    has none); the eval page replaces train's in that folder, so it shows the loss curve too."""
    import os

    from ..core.files import load_torch
    from ..tuned.train import STATE_FILE

    path = os.path.join(lens_dir, STATE_FILE)
    state = load_torch("lens", path) if os.path.exists(path) else None
    history = state.get("history") if isinstance(state, dict) else None
    return history if isinstance(history, dict) and history.get("loss") else None


def register(sub) -> None:
    t = sub.add_parser("tuned", help=HELP)
    tsub = t.add_subparsers(dest="tuned_command", metavar="train|eval", required=True)
    tr = tsub.add_parser("train", help="train (or resume) a tuned lens; checkpoints in the tuned-lens format")
    add_arguments(tr, TrainConfig, TrainCommand)
    tr.set_defaults(func=train_main)
    ev = tsub.add_parser("eval", help="per-site KL and cross-entropy, logit vs tuned lens: table, JSON, PNG")
    add_arguments(ev, EvalCommand)
    ev.set_defaults(func=eval_main)
