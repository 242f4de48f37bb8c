"""`fusedlens refine`: guess-then-refine (Gupta et al. 2025) over a corpus, logit lens and a tuned lens side by side."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.backends import BACKENDS
from ..core.checks import check_output_dir
from ..core.backends import BACKEND_HELP
from ..core.fields import option
from ..core.models import ModelOptions
from .options import add_arguments, from_args, out_default

HELP = "guess then refine: top-1 and probability mass by token-frequency bucket per layer, refine rates, depth"


@dataclass(kw_only=True)
class RefineConfig(ModelOptions):
    tokens: int = option(16_384, "tokens analysed (from --start)")
    start: int = option(0, "the first token analysed; negative: from the corpus end (e.g. a tuned lens' held-out "
                           "tail: --start -16385 --tokens 16384)")
    seq_len: int = option(512, "tokens per forward")
    buckets: str = option("10,100,1000", "upper frequency ranks of every bucket but the last")
    counts: str | None = option(None, "token counts JSON (refine.TokenCounts.save); default: counted over the corpus")
    tuned: str | None = option(None, "a tuned-lens checkpoint folder, read beside the logit lens")
    ignore_unembed_hash: bool = option(False, "read a tuned lens trained for another unembedding (its unembed_hash differs)")
    classes: str = option("function_words", "token classes of depth to correct: function_words (built in), a JSON "
                                             "{token or id: class}, or none")
    answers: str | None = option(None, "JSONL of {prompt, answer}: depth to correct of answers' first token vs "
                                       "the rest (teacher-forced)")
    choices: str | None = option(None, "JSONL of {prompt, options, answer}: per layer, top-1 is an option (format) "
                                       "and the most probable option is right (answer)")
    text: str | None = option(None, "a UTF-8 text file as corpus (default: pydoc_data.topics)")
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)
    out: str = option(out_default("refine"), "output folder")
    progress: bool = option(True, "no progress bar")


def main(args) -> int:
    import os

    from ..core.files import read_jsonl, read_text
    from ..refine.classes import read_class_map
    from ..refine.frequency import TokenCounts, parse_buckets
    from ..refine.api import refine
    from ..report.page import REPORT
    from ..report.refine import format_refine_table, write_refine_outputs
    from ..tuned.lens import read_config

    cfg = from_args(RefineConfig, args)
    for name in ("tokens", "seq_len"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}: expected >= 1, got {getattr(cfg, name)}")
    # every file is read, and every flag checked, before the model loads
    buckets = parse_buckets(cfg.buckets)
    corpus = read_text("text", cfg.text) if cfg.text else None
    counts = TokenCounts.load(cfg.counts) if cfg.counts else None
    classes = None if cfg.classes == "none" else cfg.classes if cfg.classes == "function_words" \
        else read_class_map(cfg.classes)
    answers = read_jsonl("answers", cfg.answers, ("prompt", "answer")) if cfg.answers else None
    choices = read_jsonl("choices", cfg.choices, ("prompt", "options", "answer")) if cfg.choices else None
    if cfg.tuned:
        read_config(cfg.tuned, "tuned")
    check_output_dir("out", cfg.out, "refine")
    lm = cfg.load()
    result = refine(lm, corpus, tokens=cfg.tokens, start=cfg.start, seq_len=cfg.seq_len, buckets=buckets,
                    counts=counts, tuned=cfg.tuned, classes=classes, answers=answers, choices=choices,
                    backend=cfg.backend, progress=cfg.progress, check_unembed=not cfg.ignore_unembed_hash)
    print(format_refine_table(result))
    json_path, png_path = write_refine_outputs(result, cfg.out)
    html = result.save_html(os.path.join(cfg.out, REPORT))
    print(f"time: {result.meta['seconds']:.1f}s\nwrote {json_path}, {png_path} and {html} (open it in a browser: "
          "the sites × buckets grid per lens, depth to correct)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("refine", help=HELP)
    add_arguments(p, RefineConfig)
    p.set_defaults(func=main)
