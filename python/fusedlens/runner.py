"""`fusedlens run`: a corpus through a model, every chosen layer decoded (and probed) in one pass.

One forward per batch feeds the lens kernel and the probe accumulators together;
nothing but running sums is kept. Every `checkpoint_every` tokens the sums and the
corpus position are saved, so the same command restarted after a kill finishes
with the totals of an uninterrupted run. Under torchrun each rank takes every
world-th sequence and the sums are all-reduced at the end (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from . import ops
from .aggregate import LensAggregate
from .capture import ResidualCapture
from .corpus import CorpusProgress, iter_sequences
from .records import RecordWriter, token_table


@dataclass
class RunConfig:
    corpus: list[str]
    out: str = "fusedlens_run"
    model: str | None = None          # HF name, folder or .gguf; None: the embedded SmolLM2-135M
    gguf_file: str | None = None
    field: str = "text"               # JSONL / dataset text field
    seq_len: int = 512
    batch_size: int = 4
    layers: str = "all"               # "all", "a-b" (inclusive) or "i,j,k"
    mid: bool = False
    embed: bool = True
    tuned: str | None = None          # tuned-lens checkpoint folder: decode through its translators
    probes: list[str] = dataclasses.field(default_factory=list)  # ridge probe targets (see fusedlens.probe)
    k: int = 5
    dtype: str = "float32"
    backend: str | None = None
    compute: str = "auto"
    max_tokens: int | None = None
    checkpoint_every: int = 16384
    records: bool = False             # per-token Parquet
    prompt: str | None = None         # text for the logit-lens grid (default: the corpus' first tokens)
    progress: bool = True

    def fingerprint(self) -> str:
        """What must match for a checkpoint to be resumed (not the output or progress options)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("out", "progress", "prompt", "checkpoint_every")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """"all", "a-b" (inclusive, negative counts from the end) or "i,j,k" -> block indices."""
    spec = str(spec).strip()
    try:
        if spec == "all":
            return list(range(n_layers))
        if "-" in spec[1:] and "," not in spec:
            a, b = spec[0] + spec[1:].split("-", 1)[0], spec[1:].split("-", 1)[1]
            lo, hi = int(a) % n_layers, int(b) % n_layers
            out = list(range(lo, hi + 1))
        else:
            out = sorted({int(x) % n_layers for x in spec.split(",")})
    except ValueError:
        raise ValueError(f"layers: expected 'all', 'a-b' or 'i,j,k', got {spec!r}") from None
    if not out:
        raise ValueError(f"layers: {spec!r} selects no layer")
    return out


class Timers:
    """Seconds spent per stage; additive like everything else a run saves."""

    STAGES = ("tokenize", "forward", "capture", "lens", "probes", "records")

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


def _batches(seqs, batch_size):
    batch = []
    for s in seqs:
        batch.append(s)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pad(batch) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(s.ids.numel() for s in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(batch):
        ids[row, :s.ids.numel()], mask[row, :s.ids.numel()] = s.ids, 1
    return ids, mask


class Checkpoint:
    """Per-rank state file out/checkpoint/rank{r}.pt, written atomically."""

    def __init__(self, out: str, rank: int, fingerprint: str):
        self.path = os.path.join(out, "checkpoint", f"rank{rank}.pt")
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        if not os.path.exists(self.path):
            return None
        state = torch.load(self.path, weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(f"out: {os.path.dirname(os.path.dirname(self.path))} holds a checkpoint of a different "
                             "run (other model, corpus or options); choose another --out or delete it")
        return state

    def save(self, state: dict) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        torch.save({**state, "fingerprint": self.fingerprint}, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)


def run(cfg: RunConfig, lm=None) -> dict:
    """Run the job described by cfg; returns the summary (on every rank)."""
    from .models import load_model

    if cfg.seq_len < 2 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise ValueError("seq_len >= 2, batch_size >= 1 and checkpoint_every >= 1 are required")
    if cfg.max_tokens is not None and cfg.max_tokens < 2:
        raise ValueError(f"max_tokens: need at least 2, got {cfg.max_tokens}")
    rank, world = _distributed()
    t_start = time.perf_counter()
    lm = lm or load_model(cfg.model, gguf_file=cfg.gguf_file, dtype=getattr(torch, cfg.dtype))
    capture = ResidualCapture(lm, layers=parse_layers(cfg.layers, lm.n_layers) if cfg.layers != "all" else None,
                              embed=cfg.embed, mid=cfg.mid)
    if capture.layers[-1] != lm.n_layers - 1:  # the final block is always decoded: it is the KL reference
        capture = ResidualCapture(lm, layers=capture.layers + [lm.n_layers - 1], embed=cfg.embed, mid=cfg.mid)
    lens = _tuned_lens(cfg, lm, capture.sites)
    probes = _probes(cfg, lm, capture.sites)
    ckpt = Checkpoint(cfg.out, rank, cfg.fingerprint())
    state = ckpt.load() or {}
    agg = LensAggregate.from_state_dict(state["lens"]) if "lens" in state else LensAggregate(capture.sites, lm.vocab_size)
    if probes is not None and "probes" in state:
        probes.load_state_dict(state["probes"])
    timers = Timers(state.get("seconds"))
    next_seq, tokens = state.get("next_sequence", 0), state.get("tokens", 0)
    writer = RecordWriter(os.path.join(cfg.out, "records"), rank) if cfg.records else None
    if writer is not None:
        writer.drop_unfinished()
    stop = None if cfg.max_tokens is None else -(-cfg.max_tokens // cfg.seq_len)

    def save(done: bool):
        if writer is not None:
            writer.close_part()
        ckpt.save({"lens": agg.state_dict(), "probes": probes.state_dict() if probes is not None else None,
                   "seconds": timers.seconds, "next_sequence": next_seq, "tokens": tokens, "done": done})

    from tqdm.auto import tqdm

    budget = None if stop is None else stop * cfg.seq_len // world
    progress = CorpusProgress(cfg.corpus)
    bar = tqdm(total=budget, initial=tokens, unit="tok",
               desc=f"fusedlens run (rank {rank})" if world > 1 else "fusedlens run",
               disable=not cfg.progress or rank != 0, smoothing=0.1)
    since_ckpt = 0
    if not state.get("done"):
        seqs = iter_sequences(lm.tokenizer, cfg.corpus, cfg.seq_len, field=cfg.field, start=next_seq, stop=stop,
                              rank=rank, world=world, progress=progress)
        t = time.perf_counter()
        for batch in _batches(seqs, cfg.batch_size):
            t = timers.add("tokenize", t)
            ids, mask = _pad(batch)
            emit0 = capture.emit_seconds
            res = capture.run(ids, mask)
            t = timers.add("forward", t)
            timers.seconds["forward"] -= capture.emit_seconds - emit0
            timers.seconds["capture"] += capture.emit_seconds - emit0
            hidden = lens(res.hidden) if lens is not None else res.hidden
            stats = ops.lens_stats(hidden, lm.norm, lm.unembed, res.targets.to(hidden.device), cfg.k,
                                   backend=cfg.backend, compute=cfg.compute)
            agg.update(stats, res.targets)
            t = timers.add("lens", t)
            seq_of_row = torch.tensor([s.index for s in batch])[res.batch_index]
            if probes is not None:
                probes.update(res, seq_of_row)
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
    from .run_outputs import finish

    return finish(cfg, lm, capture, agg, probes, timers, tokens, rank, world, time.perf_counter() - t_start)


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
    from .tuned import TunedLens

    apply = TunedLens.load(cfg.tuned, lm).as_site_map()
    return lambda hidden: apply(hidden, sites)


def _probes(cfg: RunConfig, lm, sites):
    if not cfg.probes:
        return None
    from .run_probes import CorpusProbes

    return CorpusProbes(lm, sites, cfg.probes)
