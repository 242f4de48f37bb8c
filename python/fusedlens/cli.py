"""Command line: `fusedlens <command>` (also `python -m fusedlens`)."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(n_tokens=args.tokens, seq_len=args.seq_len, out_dir=args.out)
    return 0


def _cmd_info(args) -> int:
    from . import ops
    from .cpu import machine
    from .models import load_model

    lm = load_model(args.model, gguf_file=args.gguf_file)
    print(json.dumps({**lm.describe(), "backends": ops.available_backends(lm.device), "machine": machine()}, indent=2))
    return 0


def _cmd_run(args) -> int:
    from .runner import RunConfig, run

    cfg = RunConfig(corpus=args.corpus, out=args.out, model=args.model, gguf_file=args.gguf_file, field=args.field,
                    seq_len=args.seq_len, batch_size=args.batch_size, layers=args.layers, mid=args.mid,
                    embed=not args.no_embed, tuned=args.tuned, probes=args.probe, k=args.k, dtype=args.dtype,
                    backend=args.backend, compute=args.compute, max_tokens=args.max_tokens,
                    checkpoint_every=args.checkpoint_every, records=args.records, prompt=args.prompt,
                    progress=not args.quiet)
    summary = run(cfg)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        from .report import format_table

        print(format_table(summary["layers"]))
        print(f"\n{summary['tokens']} tokens; wrote {args.out}/summary.json, throughput.json, layers.png, grid.png, "
              f"prediction_depth.html" + (", records/*.parquet" if args.records else ""))
    return 0


def _add_run_parser(sub) -> None:
    r = sub.add_parser("run", help="a corpus through a model: per-layer lens (and probe) results, resumable")
    r.add_argument("corpus", nargs="+", help="text files, folders, .jsonl files, saved datasets, '-' (stdin) or 'pydoc'")
    r.add_argument("--out", default="fusedlens_run", help="output folder; rerunning the same command resumes there")
    r.add_argument("--model", default=None, help="HF name, folder or .gguf file (default: embedded SmolLM2-135M)")
    r.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    r.add_argument("--field", default="text", help="text field of JSONL records / dataset column (default text)")
    r.add_argument("--seq-len", type=int, default=512, help="tokens per packed sequence (default 512)")
    r.add_argument("--batch-size", type=int, default=4, help="sequences per forward (default 4)")
    r.add_argument("--layers", default="all", help="'all', a range 'a-b' or a list 'i,j,k' (the last block is always added)")
    r.add_argument("--mid", action="store_true", help="also decode the mid-layer sites (between attention and MLP)")
    r.add_argument("--no-embed", action="store_true", help="do not decode the embedding site")
    r.add_argument("--tuned", default=None, help="decode through a tuned-lens checkpoint folder instead of the logit lens")
    r.add_argument("--probe", action="append", default=[], help="ridge probe target (repeatable): logit (of the correct next token), logprob, entropy, loss")
    r.add_argument("--k", type=int, default=5, help="top-k kept per token and site (default 5)")
    r.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    r.add_argument("--backend", default=None, choices=["torch", "cpu", "triton"], help="lens backend (default: fastest)")
    r.add_argument("--compute", default="auto", choices=["auto", "fp32", "bf16"], help="lens GEMM precision")
    r.add_argument("--max-tokens", type=int, default=None, help="token budget (default: the whole corpus)")
    r.add_argument("--checkpoint-every", type=int, default=16384, help="tokens between checkpoints (default 16384)")
    r.add_argument("--records", action="store_true", help="also write per-token records as Parquet")
    r.add_argument("--prompt", default=None, help="text for the logit-lens grid (default: the corpus' first tokens)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusedlens", description="Fused logit lens, tuned lens and streaming probes.")
    sub = p.add_subparsers(dest="command", metavar="command")
    d = sub.add_parser("demo", help="logit lens of the embedded SmolLM2-135M over pydoc text: table + PNG")
    d.add_argument("--tokens", type=int, default=2048, help="tokens of text to decode (default 2048)")
    d.add_argument("--seq-len", type=int, default=512, help="tokens per forward (default 512)")
    d.add_argument("--out", default="fusedlens_out", help="output folder (default fusedlens_out)")
    d.set_defaults(func=_cmd_demo)
    i = sub.add_parser("info", help="what the adapter finds in a model (layers, final norm, unembedding) and the CPU's ISA and kernel variants")
    i.add_argument("--model", default=None, help="HF name, folder or .gguf file (default: embedded SmolLM2-135M)")
    i.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    i.set_defaults(func=_cmd_info)
    _add_run_parser(sub)
    from .probe_report import add_probe_command
    add_probe_command(sub)
    from .tuned_cli import add_parser as add_tuned_parser

    add_tuned_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, not a traceback
        print(f"fusedlens {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
