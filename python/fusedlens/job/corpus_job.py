"""`fusedlens run`: a corpus through a model, every chosen layer decoded in one pass, and every analysis
asked for fed from that pass.

One forward per batch feeds the lens kernel, and its residuals and statistics feed the analyses
(job.analyses) together; nothing but running sums is kept. Every `checkpoint_every` tokens the
sums and the corpus position are saved, so the same command restarted after a kill finishes
with the totals of an uninterrupted run. Under torchrun each rank takes every world-th sequence
and the sums are all-reduced at the end (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import time
from dataclasses import asdict, dataclass

import torch

from .. import ops, report
from ..core.analysis import CorpusBatch, CorpusPass
from ..core.backends import BACKEND_HELP, BACKENDS, COMPUTE_MODES
from ..core.capture import ResidualCapture, parse_layers
from ..core.checkpoint import StateFile
from ..core.checks import check_output_dir
from ..core.fields import option
from ..core.files import write_json
from ..core import models  # load_model looked up when called, so a test can replace it
from ..core.models import ModelOptions
from ..data.corpus import CorpusProgress, corpus_fingerprint, iter_sequences
from ..data.windows import batched, pad_right
from .analyses import ANALYSES

STATE_FORMAT = 2  # the checkpoint's layout: one state per analysis (0.1's checkpoints do not resume)


@dataclass(kw_only=True)
class PassOptions(ModelOptions):
    """`fusedlens run`: what to read, what to decode, how to run and what to write (the analyses add theirs)."""

    corpus: list[str] = option([], "text files, folders, .jsonl files, saved datasets, '-' (stdin) or 'pydoc'",
                               positional=True)
    out: str = option("fusedlens_out/run", "output folder; rerunning the same command resumes there")
    field: str = option("text", "text field of JSONL records / dataset column")
    seq_len: int = option(512, "tokens per packed sequence")
    batch_size: int = option(4, "sequences per forward")
    layers: str = option("all", "'all', a range 'a-b' or a list 'i,j,k' (negatives count from the end; "
                                "the last block is always added)")
    mid: bool = option(False, "also decode the mid-layer sites (between attention and MLP)")
    embed: bool = option(True, "do not decode the embedding site")
    tuned: str | None = option(None, "decode through a tuned-lens checkpoint folder instead of the logit lens")
    ignore_unembed_hash: bool = option(False, "read a tuned lens trained for another unembedding (its unembed_hash differs)")
    k: int = option(5, "top-k kept per token and site")
    dtype: str = option("float32", "model dtype", choices=("float32", "bfloat16", "float16"))
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)
    compute: str = option("auto", "lens GEMM precision", choices=("auto",) + COMPUTE_MODES)
    max_tokens: int | None = option(None, "token budget (default: the whole corpus)")
    checkpoint_every: int = option(16384, "tokens between checkpoints")
    prompt: str | None = option(None, "text for the logit-lens grid (default: the corpus' first tokens)")
    progress: bool = option(True, "no progress bar")

    def fingerprint(self) -> dict:
        """What must match for a checkpoint to be resumed (not the output or progress options)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "progress", "prompt", "checkpoint_every",
                                                                    "ignore_unembed_hash")}


# The config of `fusedlens run`: the pass's fields and every registered analysis's own.
# (Bases in reverse: a dataclass lists the fields of its last base first.)
RunConfig = dataclasses.make_dataclass(
    "RunConfig", [], bases=(*reversed([a.Options for a in ANALYSES if a.Options]), PassOptions), kw_only=True)
RunConfig.__module__, RunConfig.__doc__ = __name__, PassOptions.__doc__


class Timers:
    """Seconds spent per stage; additive like everything else a run saves."""

    STAGES = ("tokenize", "forward", "capture", *(a.name for a in ANALYSES))

    def __init__(self, state: dict | None = None):
        self.seconds = {s: 0.0 for s in self.STAGES} | (state or {})

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Tear the group down while the interpreter is whole: left to interpreter finalisation,
        # gloo's worker threads can abort the process (pytorch/pytorch#190489).
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist.get_rank(), dist.get_world_size()


def run_corpus(cfg: RunConfig, lm=None) -> dict:
    """Run the job described by cfg; returns the summary (on every rank)."""
    if cfg.seq_len < 2 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise ValueError("seq_len >= 2, batch_size >= 1 and checkpoint_every >= 1 are required")
    if cfg.max_tokens is not None and cfg.max_tokens < 2:
        raise ValueError(f"max_tokens: need at least 2, got {cfg.max_tokens}")
    if not cfg.corpus:
        raise ValueError("corpus: no source given")
    if cfg.k < 1:
        raise ValueError(f"k: expected >= 1, got {cfg.k}")
    for analysis in ANALYSES:  # files and flags before the model loads: a bad one fails in a second, not after the load
        analysis.check(cfg)
    if cfg.tuned:
        from ..tuned.lens import read_config

        read_config(cfg.tuned, "tuned")
    check_output_dir("out", cfg.out, "run")
    fingerprint = {**cfg.fingerprint(), "corpus_content": corpus_fingerprint(cfg.corpus), "state_format": STATE_FORMAT}
    rank, world = _distributed()
    ckpt = StateFile(os.path.join(cfg.out, "checkpoint", f"rank{rank}.pt"), fingerprint)
    state = ckpt.load() or {}  # a checkpoint of another run, or a damaged or crafted one, fails before the load
    t_start = time.perf_counter()
    lm = lm or models.load_model(cfg.model, gguf_file=cfg.gguf_file, dtype=getattr(torch, cfg.dtype))
    lm.check_seq_len(cfg.seq_len)
    capture = ResidualCapture(lm, layers=parse_layers(cfg.layers, lm.n_layers) if cfg.layers != "all" else None,
                              embed=cfg.embed, mid=cfg.mid)
    if capture.layers[-1] != lm.n_layers - 1:  # the final block is always decoded: it is the KL reference
        capture = ResidualCapture(lm, layers=capture.layers + [lm.n_layers - 1], embed=cfg.embed, mid=cfg.mid)
    corpus_pass = CorpusPass(lm, capture, _decoder(cfg, lm, capture.sites), rank)
    analyses = [a for a in (kind.build(cfg, corpus_pass) for kind in ANALYSES) if a is not None]
    for a in analyses:
        if state.get(a.name) is not None:
            a.load_state_dict(state[a.name])
    token_sets = [a.token_sets for a in analyses if a.token_sets is not None]
    token_sets = token_sets[0] if token_sets else None  # one analysis asks for sets today (refine)
    timers = Timers(state.get("seconds"))
    next_seq, tokens = state.get("next_sequence", 0), state.get("tokens", 0)

    def save(done: bool):
        for a in analyses:
            a.on_checkpoint()
        ckpt.save({**{a.name: a.state_dict() for a in analyses}, "seconds": timers.seconds, "next_sequence": next_seq,
                   "tokens": tokens, "done": done})

    from tqdm.auto import tqdm

    budget = None if cfg.max_tokens is None else -(-cfg.max_tokens // world)
    progress = CorpusProgress(cfg.corpus)
    bar = tqdm(total=budget, initial=tokens, unit="tok",
               desc=f"fusedlens run (rank {rank})" if world > 1 else "fusedlens run",
               disable=not cfg.progress or rank != 0, smoothing=0.1)
    since_ckpt = 0
    if not state.get("done"):
        seqs = iter_sequences(lm.tokenizer, cfg.corpus, cfg.seq_len, field=cfg.field, start=next_seq, max_tokens=cfg.max_tokens,
                              rank=rank, world=world, progress=progress)
        t = time.perf_counter()
        for batch in batched(seqs, cfg.batch_size):
            t = timers.add("tokenize", t)
            ids, mask = pad_right([s.ids for s in batch])
            emit0 = capture.emit_seconds
            with contextlib.ExitStack() as hooks:  # analyses' own hooks ride along the same forward
                for a in analyses:
                    hooks.enter_context(a.forward_context())
                res = capture.run(ids, mask)
            t = timers.add("forward", t)
            timers.seconds["forward"] -= capture.emit_seconds - emit0
            timers.seconds["capture"] += capture.emit_seconds - emit0
            stats = corpus_pass.decode(res, cfg.k, token_sets)
            seq_of_row = torch.tensor([s.index for s in batch])[res.batch_index]
            rows = CorpusBatch(res, stats, mask, seq_of_row)
            for a in analyses:  # the lens first: its stage's time includes the sweep above
                a.update(rows)
                t = timers.add(a.name, t)
            n = int(mask.sum())
            tokens, since_ckpt, next_seq = tokens + n, since_ckpt + n, batch[-1].index + 1
            bar.total = _bar_total(budget, progress, tokens, world)
            bar.update(n)
            bar.set_postfix_str(f"{tokens / max(sum(timers.seconds.values()), 1e-9):.0f} tok/s")
            if since_ckpt >= cfg.checkpoint_every:
                save(False)
                since_ckpt = 0
            t = time.perf_counter()
        save(True)
    bar.close()
    return _finish(cfg, lm, capture.sites, analyses, timers, rank, world, time.perf_counter() - t_start)


def _bar_total(budget: int | None, progress: CorpusProgress, tokens: int, world: int) -> int | None:
    """This rank's expected token count: the budget, or less where the corpus looks smaller."""
    whole = progress.estimate_total(tokens * world)
    if whole is None:
        return budget
    return min(whole // world, budget) if budget is not None else whole // world


def _decoder(cfg: RunConfig, lm, sites: list[str]):
    """The pass's lens call: residuals → LensStats, through a tuned lens's translators where there is one."""
    translate = None
    if cfg.tuned is not None:
        from ..tuned.lens import TunedLens

        apply = TunedLens.load(cfg.tuned, lm, name="tuned", check_unembed=not cfg.ignore_unembed_hash).as_site_map()
        translate = lambda hidden: apply(hidden, sites)  # noqa: E731: every site but the final one

    def decode(res, k: int, token_sets=None):
        hidden = translate(res.hidden) if translate is not None else res.hidden
        return ops.lens_stats(hidden, lm.norm, lm.unembed, res.targets.to(hidden.device), k, backend=cfg.backend,
                              compute=cfg.compute, token_sets=token_sets)
    return decode


def _finish(cfg, lm, sites, analyses, timers, rank, world, wall_seconds) -> dict:
    """All-reduce the sums over ranks; rank 0 writes the outputs. Returns the summary."""
    seconds = dict(timers.seconds)
    if world > 1:
        import torch.distributed as dist

        for a in analyses:
            a.all_reduce()
        sec = torch.tensor([seconds[k] for k in seconds], dtype=torch.float64)
        dist.all_reduce(sec, op=dist.ReduceOp.MAX)  # the ranks run side by side: the slowest sets the pace
        seconds = dict(zip(seconds, sec.tolist()))
    rows, top = [{} for _ in sites], {}
    for a in analyses:
        top.update(a.summary(rows))
    summary = {"model": lm.describe(), "corpus": cfg.corpus, "tokens": top.pop("tokens"), "seq_len": cfg.seq_len,
               "sites": list(sites), "processes": world, "mean_prediction_depth": top.pop("mean_prediction_depth"),
               "lens": "tuned" if cfg.tuned else "logit", "layers": rows, **top}
    if rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        write_json(summary, os.path.join(cfg.out, "summary.json"))
        busy = sum(seconds.values())
        write_json({"tokens": summary["tokens"], "seconds": seconds, "busy_seconds": busy,
                    "tokens_per_second": summary["tokens"] / busy if busy else None,
                    "share": {k: v / busy for k, v in seconds.items()} if busy else None,
                    "wall_seconds_this_process": wall_seconds, "processes": world},
                   os.path.join(cfg.out, "throughput.json"))
        for a in analyses:
            a.write(cfg.out, summary)
        vocab = report.Vocab(lm.tokenizer)
        views = [v for a in analyses for v in a.views(summary, vocab)]
        report.write_page(os.path.join(cfg.out, report.REPORT), f"fusedlens run: {summary['lens']} lens over "
                          f"{summary['tokens']} tokens of {', '.join(map(str, cfg.corpus))}", views, vocab,
                          {"model": summary["model"]["model"], "tokens": summary["tokens"], "processes": world})
    return summary
