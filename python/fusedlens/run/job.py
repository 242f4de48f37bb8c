"""`fusedlens run`: a corpus through a model, every chosen layer decoded (and probed) in one pass.

One forward per batch feeds the lens kernel and the probe accumulators together;
nothing but running sums is kept. Every `checkpoint_every` tokens the sums and the
corpus position are saved, so the same command restarted after a kill finishes
with the totals of an uninterrupted run. Under torchrun each rank takes every
world-th sequence and the sums are all-reduced at the end (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import atexit
import os
import time
from dataclasses import asdict, dataclass

import torch

from .. import ops
from ..core.backends import BACKENDS, COMPUTE_MODES
from ..core.capture import ResidualCapture, parse_layers
from ..core.config import BACKEND_HELP, ModelOptions, option, out_default
from ..core.checkpoint import StateFile
from ..core.checks import check_output_dir
from ..data.corpus import CorpusProgress, corpus_fingerprint, iter_sequences
from ..data.windows import batched, pad_right
from ..lens.aggregate import LensAggregate
from .outputs import PictureRows, finish
from .records import RecordWriter, token_table
from .dla import CorpusDLA
from .refine import CorpusRefine


@dataclass(kw_only=True)
class RunConfig(ModelOptions):
    """`fusedlens run`: what to read, what to decode, how to run and what to write."""

    corpus: list[str] = option([], "text files, folders, .jsonl files, saved datasets, '-' (stdin) or 'pydoc'",
                               positional=True)
    out: str = option(out_default("run"), "output folder; rerunning the same command resumes there")
    field: str = option("text", "text field of JSONL records / dataset column")
    seq_len: int = option(512, "tokens per packed sequence")
    batch_size: int = option(4, "sequences per forward")
    layers: str = option("all", "'all', a range 'a-b' or a list 'i,j,k' (negatives count from the end; "
                                "the last block is always added)")
    mid: bool = option(False, "also decode the mid-layer sites (between attention and MLP)")
    embed: bool = option(True, "do not decode the embedding site")
    tuned: str | None = option(None, "decode through a tuned-lens checkpoint folder instead of the logit lens")
    ignore_unembed_hash: bool = option(False, "read a tuned lens trained for another unembedding (its unembed_hash differs)")
    probes: list[str] = option([], "ridge probe target (repeatable): logit (of the correct next token), logprob, "
                                   "entropy, loss", flag="--probe")
    probe_lags: list[int] = option([0], "lag K of the probes (repeatable): x_t against the target of position t+K "
                                        "of its sequence; -1 is seed 000 as written", flag="--lag")
    token_counts: bool = option(False, "count each next token of the corpus (token_counts.json, for --refine)")
    refine: str | None = option(None, "guess-then-refine sums of the lens by token-frequency bucket (refine.json), "
                                      "the buckets ranked by a token_counts.json")
    buckets: str = option("10,100,1000", "upper frequency ranks of the --refine buckets but the last")
    dla: bool = option(False, "direct logit attribution: each block's and head's mean direct effect on the true "
                              "next token (dla.json, dla_heads.png, dla_blocks.png)")
    k: int = option(5, "top-k kept per token and site")
    dtype: str = option("float32", "model dtype", choices=("float32", "bfloat16", "float16"))
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)
    compute: str = option("auto", "lens GEMM precision", choices=("auto",) + COMPUTE_MODES)
    max_tokens: int | None = option(None, "token budget (default: the whole corpus)")
    checkpoint_every: int = option(16384, "tokens between checkpoints")
    records: bool = option(False, "also write per-token records as Parquet")
    prompt: str | None = option(None, "text for the logit-lens grid (default: the corpus' first tokens)")
    progress: bool = option(True, "no progress bar", deprecated=("--quiet",))

    def fingerprint(self) -> dict:
        """What must match for a checkpoint to be resumed (not the output or progress options)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "progress", "prompt", "checkpoint_every",
                                                                    "ignore_unembed_hash")}


class Timers:
    """Seconds spent per stage; additive like everything else a run saves."""

    STAGES = ("tokenize", "forward", "capture", "lens", "dla", "probes", "records")

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


def run(cfg: RunConfig, lm=None) -> dict:
    """Run the job described by cfg; returns the summary (on every rank)."""
    from ..core.models import load_model

    if cfg.seq_len < 2 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise ValueError("seq_len >= 2, batch_size >= 1 and checkpoint_every >= 1 are required")
    if cfg.max_tokens is not None and cfg.max_tokens < 2:
        raise ValueError(f"max_tokens: need at least 2, got {cfg.max_tokens}")
    if not cfg.corpus:
        raise ValueError("corpus: no source given")
    if cfg.k < 1:
        raise ValueError(f"k: expected >= 1, got {cfg.k}")
    if cfg.refine:  # files and flags before the model loads: a bad one fails in a second, not after the load
        from ..refine.frequency import TokenCounts, parse_buckets

        TokenCounts.load(cfg.refine, name="refine")
        parse_buckets(cfg.buckets)
    if cfg.tuned:
        from ..tuned.lens import read_config

        read_config(cfg.tuned, "tuned")
    check_output_dir("out", cfg.out, "run")
    fingerprint = {**cfg.fingerprint(), "corpus_content": corpus_fingerprint(cfg.corpus)}
    rank, world = _distributed()
    ckpt = StateFile(os.path.join(cfg.out, "checkpoint", f"rank{rank}.pt"), fingerprint)
    state = ckpt.load() or {}  # a checkpoint of another run, or a damaged or crafted one, fails before the load
    t_start = time.perf_counter()
    lm = lm or load_model(cfg.model, gguf_file=cfg.gguf_file, dtype=getattr(torch, cfg.dtype))
    lm.check_seq_len(cfg.seq_len)
    capture = ResidualCapture(lm, layers=parse_layers(cfg.layers, lm.n_layers) if cfg.layers != "all" else None,
                              embed=cfg.embed, mid=cfg.mid)
    if capture.layers[-1] != lm.n_layers - 1:  # the final block is always decoded: it is the KL reference
        capture = ResidualCapture(lm, layers=capture.layers + [lm.n_layers - 1], embed=cfg.embed, mid=cfg.mid)
    lens = _tuned_lens(cfg, lm, capture.sites)
    probes = _probes(cfg, lm, capture.sites)
    refine = CorpusRefine(lm, capture.sites, cfg.token_counts, cfg.refine, cfg.buckets) \
        if cfg.token_counts or cfg.refine else None
    dla = CorpusDLA(lm) if cfg.dla else None
    agg = LensAggregate.from_state_dict(state["lens"]) if "lens" in state else LensAggregate(capture.sites, lm.vocab_size)
    if probes is not None and "probes" in state:
        probes.load_state_dict(state["probes"])
    if refine is not None and state.get("refine"):
        refine.load_state_dict(state["refine"])
    if dla is not None and state.get("dla"):
        dla.load_state_dict(state["dla"])
    pictures = PictureRows.from_state(state.get("pictures"), capture.sites)
    timers = Timers(state.get("seconds"))
    next_seq, tokens = state.get("next_sequence", 0), state.get("tokens", 0)
    writer = RecordWriter(os.path.join(cfg.out, "records"), rank) if cfg.records else None
    if writer is not None:
        writer.drop_unfinished()

    def save(done: bool):
        if writer is not None:
            writer.close_part()
        ckpt.save({"lens": agg.state_dict(), "probes": probes.state_dict() if probes is not None else None,
                   "refine": refine.state_dict() if refine is not None else None,
                   "dla": dla.state_dict() if dla is not None else None,
                   "seconds": timers.seconds, "next_sequence": next_seq, "tokens": tokens, "done": done,
                   "pictures": pictures.state()})

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
            if dla is None:
                res = capture.run(ids, mask)
            else:
                with dla.capture:  # the components' hooks ride along the same forward
                    res = capture.run(ids, mask)
            t = timers.add("forward", t)
            timers.seconds["forward"] -= capture.emit_seconds - emit0
            timers.seconds["capture"] += capture.emit_seconds - emit0
            hidden = lens(res.hidden) if lens is not None else res.hidden
            stats = ops.lens_stats(hidden, lm.norm, lm.unembed, res.targets.to(hidden.device), cfg.k,
                                   backend=cfg.backend, compute=cfg.compute,
                                   token_sets=refine.token_sets if refine is not None else None)
            agg.update(stats, res.targets)
            if refine is not None:
                refine.update(stats, res.targets)
            t = timers.add("lens", t)
            if dla is not None:
                dla.update(mask, res.targets)
                t = timers.add("dla", t)
            seq_of_row = torch.tensor([s.index for s in batch])[res.batch_index]
            pictures.keep(stats, res, seq_of_row)
            if probes is not None:
                probes.update(res, stats, seq_of_row)
                t = timers.add("probes", t)
            if writer is not None:
                writer.write(token_table(stats, seq_of_row, res.position, res.input_ids, res.targets, capture.sites),
                             batch[0].index)
                t = timers.add("records", t)
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
    if cfg.prompt and rank == 0:  # the grid of a prompt of the user's: its own forward, same capture and lens
        pictures.keep_prompt(lm, capture, lens, cfg)
    return finish(cfg, lm, agg, probes, pictures, timers, tokens, rank, world, time.perf_counter() - t_start, refine, dla)


def _bar_total(budget: int | None, progress: CorpusProgress, tokens: int, world: int) -> int | None:
    """This rank's expected token count: the budget, or less where the corpus looks smaller."""
    whole = progress.estimate_total(tokens * world)
    if whole is None:
        return budget
    return min(whole // world, budget) if budget is not None else whole // world


def _tuned_lens(cfg: RunConfig, lm, sites: list[str]):
    """hidden [sites, N, d] -> the same with every site but the final one through its translator."""
    if cfg.tuned is None:
        return None
    from ..tuned.lens import TunedLens

    apply = TunedLens.load(cfg.tuned, lm, name="tuned", check_unembed=not cfg.ignore_unembed_hash).as_site_map()
    return lambda hidden: apply(hidden, sites)


def _probes(cfg: RunConfig, lm, sites):
    if not cfg.probes:
        return None
    from .probes import CorpusProbes

    return CorpusProbes(lm, sites, cfg.probes, cfg.probe_lags)
