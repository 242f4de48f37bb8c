"""`fusedlens demo`: the logit lens of the embedded SmolLM2-135M (or --model) over English text from pydoc_data."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .. import report
from ..core.checks import check_output_dir
from ..core.files import write_json
from ..core.fields import option
from ..core.model_files import DEFAULT_MODEL, MODELS
from ..core import models  # load_model looked up when called, so a test can replace it
from ..core.models import LensModel, ModelOptions
from ..data.windows import corpus_ids
from ..lens.logit_lens import LogitLens
from .options import add_arguments, from_args, out_default

HELP = "logit lens of the embedded SmolLM2-135M (or --model) over pydoc text: table, JSON and pictures"


@dataclass(kw_only=True)
class DemoConfig(ModelOptions):
    tokens: int = option(2048, "tokens of text to decode")
    seq_len: int = option(512, "tokens per forward")
    out: str = option(out_default("demo"), "output folder")


def run_demo(n_tokens: int = 2048, seq_len: int = 512, out_dir: str = out_default("demo"), k: int = 1,
             lm: LensModel | None = None, quiet: bool = False, grid_positions: int = 24,
             model: str | None = None, gguf_file: str | None = None) -> list[dict]:
    say = (lambda *a: None) if quiet else print
    if n_tokens < 2 or seq_len < 2:
        raise ValueError(f"n_tokens, seq_len: need at least 2 tokens, got {n_tokens}, {seq_len}")
    check_output_dir("out", out_dir, "demo")
    t0 = time.perf_counter()
    lm = lm or models.load_model(model, gguf_file=gguf_file)
    name = MODELS[model or DEFAULT_MODEL].title if (model or DEFAULT_MODEL) in MODELS else lm.describe()["model"]
    lm.check_window(min(seq_len, n_tokens))
    say(f"model: {lm.describe()['model']} ({lm.n_layers} layers, d_model {lm.d_model}, vocab {lm.vocab_size}) "
        f"loaded in {time.perf_counter() - t0:.1f}s")
    t1 = time.perf_counter()
    result = LogitLens(lm, k=k).run(corpus_ids(lm.tokenizer)[:n_tokens], seq_len=seq_len,
                                    batch_size=1, progress=not quiet)  # one sequence a forward: a moving bar, less memory
    rows = result.summary()
    say(f"logit lens over {result.n_tokens} tokens of pydoc_data.topics in {time.perf_counter() - t1:.1f}s\n")
    say(report.format_table(rows))
    say(f"\nmean prediction depth: {result.mean_prediction_depth:.2f} (sites, 0 = embedding)")
    write_json({"model": lm.describe(), "tokens": result.n_tokens,
                       "mean_prediction_depth": result.mean_prediction_depth, "layers": rows},
                      os.path.join(out_dir, "demo.json"))
    report.plot_layer_curves(rows, os.path.join(out_dir, "demo_logit_lens.png"),
                             title=f"logit lens, {name}, {result.n_tokens} tokens of pydoc text")
    report.plot_lens_grid(result, lm.tokenizer, os.path.join(out_dir, "demo_lens_grid.png"), seq=0,
                          max_positions=grid_positions,
                          title=f"logit lens of the first {grid_positions} tokens of the pydoc text (bold = true next token)")
    result.lens = f"logit lens, {name}"
    report.write_page(os.path.join(out_dir, report.REPORT), f"fusedlens demo: the logit lens of {name}",
                      [dict(report.lens_view({result.lens: result}, vocab := report.Vocab(lm.tokenizer)),
                            title="tokens × sites (hover a cell, click a token)"),
                       report.layer_curves_view(rows, f"per site, over all {result.n_tokens} tokens")],
                      vocab, {"model": lm.describe()["model"], "tokens": result.n_tokens})
    say(f"wrote {out_dir}/demo.json, {out_dir}/demo_logit_lens.png, {out_dir}/demo_lens_grid.png and {out_dir}/{report.REPORT}")
    return rows


def main(args) -> int:
    cfg = from_args(DemoConfig, args)
    run_demo(n_tokens=cfg.tokens, seq_len=cfg.seq_len, out_dir=cfg.out, model=cfg.model, gguf_file=cfg.gguf_file,
             k=report.lens.TOPK_SHOWN)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help=HELP)
    add_arguments(p, DemoConfig)
    p.set_defaults(func=main)
