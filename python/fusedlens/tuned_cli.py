"""`fusedlens tuned train|eval`: train a tuned lens on the pydoc corpus and compare it with the logit lens.

The corpus is the embedded pydoc text; its last --eval-tokens tokens are held out from
training and `eval` reads only those (the first --tokens of them).
"""
from __future__ import annotations

import functools
import json
import os

import torch

DEFAULT_OUT = os.path.join("fusedlens_out", "tuned_lens")


@functools.lru_cache(maxsize=2)
def corpus_ids(tokenizer) -> torch.Tensor:
    """The pydoc corpus as token ids (about 113k for SmolLM2; tokenising takes seconds, so it is kept)."""
    from .demo import pydoc_text

    return tokenizer(pydoc_text(), add_special_tokens=False, return_tensors="pt").input_ids[0]


def corpus_split(lm, eval_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .tuned_train import split_corpus

    return split_corpus(corpus_ids(lm.tokenizer), eval_tokens)


def _cmd_train(args) -> int:
    from .models import load_model
    from .tuned import TunedLens
    from .tuned_train import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, tokens_per_step=args.tokens_per_step, seq_len=args.seq_len, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                      warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every, backend=args.backend,
                      compute=args.compute)
    lm = load_model(args.model, gguf_file=args.gguf_file)
    train_ids, _ = corpus_split(lm, args.eval_tokens)
    lens = TunedLens.from_model(lm, mid=args.mid, bias=not args.no_bias)
    history = train(lm, lens, train_ids, cfg, out_dir=args.out, progress=not args.quiet)
    print(json.dumps({"out": args.out, "steps": len(history["loss"]), "tokens": history["tokens"],
                      "train_seconds": round(history["seconds"], 1), "first_loss": history["loss"][0],
                      "last_loss": history["loss"][-1], "compute": history.get("compute")}))
    return 0


def _cmd_eval(args) -> int:
    from .models import load_model
    from .tuned import TunedLens
    from .tuned_eval import evaluate, format_table, write_report

    lm = load_model(args.model, gguf_file=args.gguf_file)
    lens = TunedLens.load(args.lens, lm)
    _, held_out = corpus_split(lm, args.eval_tokens)
    ids = held_out[:args.tokens]
    rows = evaluate(lm, lens, ids, seq_len=args.seq_len, backend=args.backend, progress=not args.quiet)
    print(format_table(rows))
    lens_sites = rows[:-1]
    better = sum(r["kl_bits_tuned"] < r["kl_bits_logit"] for r in lens_sites)
    print(f"\ntuned lens has lower held-out KL than the logit lens at {better} of {len(lens_sites)} sites")
    meta = {"model": lm.describe(), "lens": args.lens, "held_out_tokens": ids.numel(), "seq_len": args.seq_len}
    out_dir = args.out or args.lens
    paths = write_report(rows, out_dir, meta, f"logit vs tuned lens, {ids.numel()} held-out tokens")
    print("wrote " + " and ".join(paths))
    return 0


def _common(p) -> None:
    p.add_argument("--model", default=None, help="HF name, folder or .gguf file (default: embedded SmolLM2-135M)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    p.add_argument("--eval-tokens", type=int, default=8192, help="tokens at the corpus end held out (default 8192)")
    p.add_argument("--backend", default=None, choices=["torch", "cpu", "triton"], help="kernel backend")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(sub) -> None:
    """Register `tuned train` and `tuned eval` on the CLI's subparsers."""
    t = sub.add_parser("tuned", help="train a tuned lens / compare it with the logit lens on held-out text")
    tsub = t.add_subparsers(dest="tuned_command", metavar="train|eval", required=True)
    tr = tsub.add_parser("train", help="train (or resume) a tuned lens; checkpoints in the tuned-lens format")
    tr.add_argument("--out", default=DEFAULT_OUT, help=f"checkpoint folder, resumed if present (default {DEFAULT_OUT})")
    tr.add_argument("--steps", type=int, default=250)
    tr.add_argument("--tokens-per-step", type=int, default=2048)
    tr.add_argument("--seq-len", type=int, default=256)
    tr.add_argument("--lr", type=float, default=1.0, help="in dampened units: SGD's lr is lr * (1 - momentum)")
    tr.add_argument("--momentum", type=float, default=0.9)
    tr.add_argument("--weight-decay", type=float, default=1e-3)
    tr.add_argument("--clip-norm", type=float, default=1.0)
    tr.add_argument("--warmup-steps", type=int, default=0)
    tr.add_argument("--checkpoint-every", type=int, default=25)
    tr.add_argument("--mid", action="store_true", help="also translators at the mid-layer sites")
    tr.add_argument("--no-bias", action="store_true", help="translators without the bias b")
    tr.add_argument("--compute", default="auto", choices=["auto", "fp32", "bf16"],
                    help="GEMM operands of the fused loss (auto: bf16 where the CPU has bf16 dot instructions)")
    _common(tr)
    tr.set_defaults(func=_cmd_train)
    ev = tsub.add_parser("eval", help="per-site KL and cross-entropy, logit vs tuned lens: table, JSON, PNG")
    ev.add_argument("--lens", default=DEFAULT_OUT, help=f"tuned lens folder (default {DEFAULT_OUT})")
    ev.add_argument("--tokens", type=int, default=2048, help="held-out tokens to evaluate (default 2048)")
    ev.add_argument("--seq-len", type=int, default=256)
    ev.add_argument("--out", default=None, help="where to write tuned_eval.json/png (default: the lens folder)")
    _common(ev)
    ev.set_defaults(func=_cmd_eval)
