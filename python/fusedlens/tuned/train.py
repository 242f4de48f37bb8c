"""Training a tuned lens: the published recipe by default, resumable checkpoints.

Recipe (Belrose et al., and the tuned-lens package's defaults): SGD with Nesterov
momentum 0.9, learning rate 1.0 in "dampened" units (the optimizer's lr is
lr · (1 − momentum)), weight decay 1e-3 on A and b (i.e. toward the identity map),
linear decay of the learning rate to 0 over the run, gradient norm clipped at 1.0.
The loss of a step is Σ_sites mean_tokens KL(p_final ‖ p_lens) (with --downweight-top N, a weighted
mean: rows whose true next token is among the N most frequent weigh --factor); the progress bar
shows it per site. Each step reads the next `tokens_per_step` tokens of the training
stream (wrapping around at its end), runs the model once with residual capture and
takes the final layer's distribution as the target.

The fused loss runs with bf16 GEMM operands (`lens_kl(compute="bf16")`) where that is
fast: on the `cpu` backend when the CPU has bf16 dot instructions, or for bf16
weights. A step then costs about half the fp32 one; the gradient's rounding error
(2⁻⁸ relative per term) is far below the noise of a stochastic step.

A checkpoint folder holds the lens in the tuned-lens format (params.pt, config.json)
and train_state.pt (optimizer and scheduler state, step, stream position, losses), so
`train(..., out_dir=same)` continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch

from ..core.backends import BACKENDS, COMPUTE_MODES, resolve_compute
from ..core.capture import ResidualCapture
from ..core.checkpoint import StateFile
from ..core.backends import BACKEND_HELP
from ..core.fields import option
from ..core.models import LensModel
from ..data.windows import TokenStream
from .lens import CONFIG_FILE, PARAMS_FILE, TunedLens

STATE_FILE = "train_state.pt"
RESUME_MUST_MATCH = ("steps", "tokens_per_step", "seq_len", "lr", "momentum", "weight_decay", "clip_norm",
                     "warmup_steps", "downweight_top", "downweight_factor")


@dataclass
class TrainConfig:
    """The training recipe (the published one by default)."""

    steps: int = option(250, "optimizer steps")
    tokens_per_step: int = option(2048, "tokens per step (a multiple of --seq-len)")
    seq_len: int = option(256, "tokens per sequence; a step is tokens_per_step / seq_len sequences")
    lr: float = option(1.0, "in dampened units: SGD's step size is lr * (1 - momentum)")
    momentum: float = option(0.9, "Nesterov momentum")
    weight_decay: float = option(1e-3, "weight decay of A and b (toward the identity map)")
    clip_norm: float = option(1.0, "gradient norm clipping")
    warmup_steps: int = option(0, "linear warm-up steps before the linear decay")
    checkpoint_every: int = option(25, "steps between checkpoints")
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)
    compute: str = option("auto", "GEMM operands of the fused loss (auto: bf16 where the CPU has bf16 dot "
                                  "instructions or the weights are bf16)", choices=("auto",) + COMPUTE_MODES)
    downweight_top: int = option(0, "rows whose true next token is among the N most frequent tokens of the "
                                    "training text get loss weight --factor (the down-weighted lens of Gupta et al. 2025)")
    downweight_factor: float = option(1.0, "the loss weight of those rows", flag="--factor")

    def __post_init__(self):
        for name in ("steps", "tokens_per_step", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.tokens_per_step % min(self.seq_len, self.tokens_per_step):
            raise ValueError(f"tokens_per_step: expected a multiple of seq_len ({self.seq_len}), "
                             f"got {self.tokens_per_step}")
        if not 0 <= self.momentum < 1 or self.lr <= 0 or self.weight_decay < 0 or self.clip_norm <= 0:
            raise ValueError("lr > 0, 0 <= momentum < 1, weight_decay >= 0 and clip_norm > 0 are needed")
        if self.compute != "auto" and self.compute not in COMPUTE_MODES:
            raise ValueError(f"compute: expected 'auto' or one of {COMPUTE_MODES}, got {self.compute!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps: expected in [0, steps), got {self.warmup_steps}")
        if self.downweight_top < 0 or not 0 <= self.downweight_factor < float("inf"):
            raise ValueError(f"downweight_top >= 0 and a finite factor >= 0 are needed, got {self.downweight_top}, "
                             f"{self.downweight_factor}")


def row_weights(targets: torch.Tensor, frequent: torch.Tensor | None, factor: float) -> torch.Tensor | None:
    """Loss weight per row [tokens]: `factor` where the true next token is one of `frequent`, else 1
    (rows without a next token: 1). None: no down-weighting."""
    if frequent is None:
        return None
    hit = torch.isin(targets, frequent.to(targets.device)) & (targets >= 0)
    return torch.where(hit, float(factor), 1.0)


def most_frequent(ids: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """The n most frequent ids of a 1-D id tensor (ties by ascending id)."""
    counts = torch.bincount(ids.reshape(-1).long(), minlength=vocab_size)
    return torch.argsort(-counts, stable=True)[:n]


def make_optimizer(lens: TunedLens, cfg: TrainConfig):
    opt = torch.optim.SGD(lens.parameters(), lr=cfg.lr * (1 - cfg.momentum), momentum=cfg.momentum,
                          nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)

    def factor(step):  # linear warmup, then linear decay to 0 at the last step
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, 1 - (step - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _state_file(out_dir: str, cfg: TrainConfig) -> StateFile:
    return StateFile(os.path.join(out_dir, STATE_FILE), {k: getattr(cfg, k) for k in RESUME_MUST_MATCH})


def save_checkpoint(out_dir: str, lens: TunedLens, opt, sched, cfg: TrainConfig, step: int, stream: TokenStream,
                    history: dict) -> None:
    """Lens in the tuned-lens format plus the training state; the state file is replaced atomically last."""
    lens.save(out_dir)
    _state_file(out_dir, cfg).save({"step": step, "position": stream.position, "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "config": dataclasses.asdict(cfg),
                                    "history": history})


def check_out_dir(out_dir: str, overwrite: bool = False) -> None:
    """A training folder is new, or resumable (its train_state.pt), or `overwrite` is given: a trained lens
    whose training state is gone is never silently replaced by a new one."""
    lens_files = [f for f in (CONFIG_FILE, PARAMS_FILE) if os.path.exists(os.path.join(out_dir, f))]
    if lens_files and not os.path.exists(os.path.join(out_dir, STATE_FILE)) and not overwrite:
        raise ValueError(f"out: {out_dir} holds a tuned lens ({', '.join(lens_files)}) but no {STATE_FILE} to resume "
                         "from; training would replace it: choose another folder, or pass --overwrite")


def read_state(out_dir: str, cfg: TrainConfig) -> dict | None:
    """The training state in out_dir (None if there is none); ValueError if it is of another run, damaged,
    or holds anything but tensors and plain data."""
    return _state_file(out_dir, cfg).load()


def _resume(state, out_dir, lm, lens, opt, sched, stream, history) -> tuple[TunedLens, int]:
    loaded = TunedLens.load(out_dir, lm)
    if loaded.sites != lens.sites:
        raise ValueError(f"out_dir: its lens has sites {loaded.sites[:3]}..., not the requested ones")
    lens.load_state_dict(loaded.state_dict())
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    stream.position = state["position"]
    history.update(state["history"])
    return lens, state["step"]


def train(lm: LensModel, lens: TunedLens, train_ids: torch.Tensor, cfg: TrainConfig, *, out_dir: str | None = None,
          progress: bool = True, overwrite: bool = False) -> dict:
    """Train `lens` in place on train_ids (1-D); with out_dir, checkpoint there and resume from it
    (a lens there without its training state is an error unless `overwrite`).

    Returns the history: per-step mean KL per site ("loss"), "seconds" of training in
    this and earlier runs, and the "tokens" seen.
    """
    from tqdm.auto import tqdm

    if out_dir:
        check_out_dir(out_dir, overwrite)
    lm.check_seq_len(cfg.seq_len)
    capture = ResidualCapture(lm, embed=True, mid=any(s.startswith("mid.") for s in lens.sites))
    if capture.sites[:-1] != lens.sites:
        raise ValueError(f"lens: its sites do not match the model's hidden states ({capture.sites[:3]}...)")
    stream = TokenStream(train_ids, cfg.seq_len)
    opt, sched = make_optimizer(lens, cfg)
    history = {"loss": [], "seconds": 0.0, "tokens": 0}
    step = 0
    state = _state_file(out_dir, cfg).load() if out_dir else None
    if state is not None:
        lens, step = _resume(state, out_dir, lm, lens, opt, sched, stream, history)
    compute = resolve_compute(cfg.compute, lens.unembed.weight, cfg.backend, training=True)
    history["compute"] = compute
    frequent = most_frequent(train_ids, cfg.downweight_top, lm.vocab_size) if cfg.downweight_top else None
    lens.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="tuned lens", unit="step")
    running = None
    while step < cfg.steps:
        t0 = time.perf_counter()
        res = capture.run(stream.next(cfg.tokens_per_step))
        kl = lens.kl_to_final(res.hidden[:-1], res.hidden[-1], backend=cfg.backend, compute=compute)
        w = row_weights(res.targets, frequent, cfg.downweight_factor)
        # the weights reach the fused loss's gradient as its per-row upstream gradient
        loss = kl.mean(1).sum() if w is None else (kl * w.to(kl)).sum(1).sum() / w.sum().clamp_min(1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lens.parameters(), cfg.clip_norm)
        opt.step()
        sched.step()
        step += 1
        per_site = float(loss.detach()) / len(lens.sites)
        if not math.isfinite(per_site):
            raise FloatingPointError(f"step {step}: the loss is {per_site}")
        history["loss"].append(per_site)
        history["seconds"] += time.perf_counter() - t0
        history["tokens"] += res.hidden.shape[1]
        running = per_site if running is None else 0.9 * running + 0.1 * per_site
        bar.set_postfix(kl=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.3g}")
        bar.update(1)
        if out_dir and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save_checkpoint(out_dir, lens, opt, sched, cfg, step, stream, history)
    bar.close()
    lens.eval()
    return history
