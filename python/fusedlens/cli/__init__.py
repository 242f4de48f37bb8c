"""The command line, `fusedlens <command>` (also `python -m fusedlens`): one module per command, each
registering the same way, its flags built from its config dataclass (cli.config)."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "info", "run", "probe", "refine", "tuned", "dla", "patch", "patchscope", "directions", "steer",
            "concepts")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusedlens", description="Fused logit lens, tuned lens, streaming probes, "
                                                          "direct logit attribution and interventions.")
    sub = p.add_subparsers(dest="command", metavar="command")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
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
