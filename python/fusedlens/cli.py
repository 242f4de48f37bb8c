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
    from .models import load_model

    lm = load_model(args.model, gguf_file=args.gguf_file)
    print(json.dumps({**lm.describe(), "backends": ops.available_backends(lm.device)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusedlens", description="Fused logit lens, tuned lens and streaming probes.")
    sub = p.add_subparsers(dest="command", metavar="command")
    d = sub.add_parser("demo", help="logit lens of the embedded SmolLM2-135M over pydoc text: table + PNG")
    d.add_argument("--tokens", type=int, default=2048, help="tokens of text to decode (default 2048)")
    d.add_argument("--seq-len", type=int, default=512, help="tokens per forward (default 512)")
    d.add_argument("--out", default="fusedlens_out", help="output folder (default fusedlens_out)")
    d.set_defaults(func=_cmd_demo)
    i = sub.add_parser("info", help="what the adapter finds in a model (layers, final norm, unembedding)")
    i.add_argument("--model", default=None, help="HF name, folder or .gguf file (default: embedded SmolLM2-135M)")
    i.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    i.set_defaults(func=_cmd_info)
    from .probe_report import add_probe_command
    add_probe_command(sub)
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
