"""The command line, `fusedlens <command>` (also `python -m fusedlens`): one module per command, each
registering the same way, its flags built from its config dataclass (cli.options)."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "info", "run", "probe", "refine", "tuned", "dla", "patch", "patchscope", "directions", "steer",
            "concepts", "view")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusedlens", description="Fused logit lens, tuned lens, streaming probes, "
                                                          "direct logit attribution and interventions.")
    sub = p.add_subparsers(dest="command", metavar="command")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv=None) -> int:
    from ..core.checks import remove_unused_output_dirs

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        _check_models(args)
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, not a traceback
        print(f"fusedlens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, UnicodeError) as err:  # a file that could not be read or written: still one line
        print(f"fusedlens {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        remove_unused_output_dirs()  # no-op after a success: what ran wrote its files there


def _check_models(args) -> None:
    """--model (and --target-model) paths are checked before anything else runs."""
    from ..core.models import check_model_path

    for name, gguf in (("model", "gguf_file"), ("target_model", None)):
        value = getattr(args, name, None)
        if value is not None:
            try:
                check_model_path(value, getattr(args, gguf, None) if gguf else None)
            except ValueError as err:
                raise ValueError(str(err).replace("model: ", f"{name}: ", 1)) from None


if __name__ == "__main__":
    sys.exit(main())
