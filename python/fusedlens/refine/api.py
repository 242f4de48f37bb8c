"""`refine()`: guess-then-refine statistics (Gupta et al. 2025) of a corpus, logit lens and a tuned lens side by side.

Token frequencies come from the whole corpus (counts of each next token; or a counts
file), their rank buckets become token sets, and one forward per window feeds the fused
lens sweep of each lens with those sets: top-1 ids and per-bucket probability mass come
out of the same sweep, and RefineSums adds them up. Nothing per token is kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .. import ops
from ..core.capture import ResidualCapture
from ..core.models import LensModel, load_model
from ..data.windows import corpus_ids, windows
from ..report.page import Viewable
from ..report.refine import refine_views
from .aggregate import RefineSums
from ..core.files import read_jsonl
from .classes import class_map, read_class_map
from .tasks import answer_depths, multiple_choice
from .frequency import DEFAULT_BUCKETS, TokenCounts, bucket_names, check_buckets


@dataclass
class RefineResult(Viewable):
    """Per lens, the shares and rates of RefineSums.summary; `save_html(path)` writes the interactive page."""

    sites: list[str]
    buckets: list[str]
    lenses: dict  # lens name -> RefineSums.summary(...)
    meta: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)  # lens name -> {"answers": ..., "choices": ...} (refine.tasks)

    html_title = "fusedlens: guess then refine"

    def views(self, vocab) -> list[dict]:
        return refine_views(self)

    def to_json(self) -> dict:
        return {**self.meta, "sites": self.sites, "buckets": self.buckets, "lenses": self.lenses, "tasks": self.tasks}


def refine(lm: LensModel | None = None, corpus=None, *, tokens: int = 16_384, start: int = 0, seq_len: int = 512,
           buckets=DEFAULT_BUCKETS, counts: TokenCounts | str | None = None, tuned=None,
           classes=None, answers=None, choices=None, backend: str | None = None,
           progress: bool = True, check_unembed: bool = True) -> RefineResult:
    """Per site and lens: top-1 share and probability mass per frequency bucket, refine rates, depth to correct.

    corpus: text or token ids (default: the pydoc corpus); `tokens` tokens from `start`
    (negative: counted from the end) are analysed, and the whole of it is counted for the frequencies unless `counts` (a
    TokenCounts or a saved counts JSON) is given; buckets: upper ranks of every bucket but
    the last; tuned: a TunedLens (or its checkpoint folder) read beside the logit lens;
    classes: token classes for depth to correct by class (refine.classes.class_map:
    'function_words', a JSON path, a dict or a callable; None: none); answers, choices:
    JSONL files of prompts with answers / with options (refine.tasks), or their lines as read by
    core.files.read_jsonl, read by every lens. Files are read before the model loads.
    """
    for name, v, low in (("tokens", tokens, 1), ("seq_len", seq_len, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    # files first: a bad one fails before the model loads and the corpus is swept
    answer_items = read_jsonl("answers", answers, ("prompt", "answer")) if isinstance(answers, str) else answers
    choice_items = read_jsonl("choices", choices, ("prompt", "options", "answer")) if isinstance(choices, str) \
        else choices
    if isinstance(counts, str):
        counts = TokenCounts.load(counts)
    if isinstance(classes, str) and classes != "function_words":
        classes = read_class_map(classes)
    t_start = time.perf_counter()
    lm = lm or load_model()
    lm.check_window(min(seq_len, tokens) + 1)  # each window repeats the previous one's last token
    bounds = check_buckets(buckets, lm.vocab_size)
    ids = corpus_ids(lm.tokenizer, corpus, None)
    if isinstance(start, bool) or not isinstance(start, int) or not -ids.numel() <= start < ids.numel():
        raise ValueError(f"start: expected an int in [{-ids.numel()}, {ids.numel()}), got {start!r}")
    first = start % ids.numel()
    if ids.numel() - first < tokens + 1:
        raise ValueError(f"corpus: {ids.numel() - first} tokens from {first}, need {tokens + 1} (tokens + 1)")
    if counts is None:
        counts = TokenCounts(lm.vocab_size).update(ids[1:])
    if counts.vocab_size != lm.vocab_size:
        raise ValueError(f"counts: for a vocabulary of {counts.vocab_size}, the model has {lm.vocab_size}")
    tuned_source = tuned if isinstance(tuned, str) else None
    if isinstance(tuned, str):
        from ..tuned import TunedLens

        tuned = TunedLens.load(tuned, lm, name="tuned", check_unembed=check_unembed)
    bucket_of = counts.buckets(bounds)
    names = bucket_names(bounds)
    class_of, class_names = (None, []) if classes is None else class_map(classes, lm.tokenizer, lm.vocab_size)
    capture = ResidualCapture(lm)
    sites = list(capture.sites)
    lenses = {"logit": RefineSums(len(sites), bucket_of, len(names), class_of, len(class_names))}
    if tuned is not None:
        lenses["tuned"] = RefineSums(len(sites), bucket_of, len(names), class_of, len(class_names))
    sets = lenses["logit"].token_sets()
    for w in tqdm(windows(ids[first:first + tokens + 1], seq_len, overlap=1), desc="refine", unit="window", disable=not progress):
        res = capture.run(w[None])
        stats = ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, 1, backend=backend, token_sets=sets)
        lenses["logit"].update(stats, res.targets)
        if tuned is not None:
            lenses["tuned"].update(tuned.lens_stats(res.hidden, res.targets, 1, backend=backend, token_sets=sets),
                                   res.targets)
    tasks = {}
    if answer_items or choice_items:
        readers = {"logit": None}
        if tuned is not None:
            readers["tuned"] = lambda h, t, token_sets=None: tuned.lens_stats(h, t, 1, backend=backend,
                                                                              token_sets=token_sets)
        for name, fn in readers.items():
            tasks[name] = {}
            if answer_items:
                tasks[name]["answers"] = answer_depths(lm, answer_items, fn)
            if choice_items:
                tasks[name]["choices"] = multiple_choice(lm, choice_items, fn)
    meta = {"model": lm.describe(), "tokens": tokens, "start": first, "seq_len": seq_len, "bucket_bounds": bounds,
            "corpus_tokens_counted": counts.total, "tuned": tuned_source or (tuned is not None),
            "seconds": time.perf_counter() - t_start}
    return RefineResult(sites, names, {k: v.summary(sites, names, class_names) for k, v in lenses.items()}, meta,
                        tasks)
