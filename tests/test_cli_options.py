"""cli/options.py: a config dataclass is its command line (flags, defaults, choices)."""
import argparse
from dataclasses import dataclass

import pytest

from fusedlens.cli import build_parser, main
from fusedlens.cli.options import add_arguments, from_args
from fusedlens.core.fields import option


@dataclass(kw_only=True)
class Toy:
    corpus: list[str] = option([], "inputs", positional=True)
    n: int = option(3, "a count")
    name: str | None = option(None, "a name")
    mode: str = option("a", "a mode", choices=("a", "b"))
    tags: list[str] = option([], "repeatable", flag="--tag")
    fast: bool = option(False, "go fast")
    progress: bool = option(True, "no progress bar")


def parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, Toy)
    return from_args(Toy, p.parse_args(argv))


def test_defaults_come_from_the_dataclass():
    assert parse(["x"]) == Toy(corpus=["x"])


def test_every_kind_of_field():
    cfg = parse(["x", "y", "--n", "5", "--name", "z", "--mode", "b", "--tag", "t1", "--tag", "t2", "--fast",
                 "--no-progress"])
    assert cfg == Toy(corpus=["x", "y"], n=5, name="z", mode="b", tags=["t1", "t2"], fast=True, progress=False)
    with pytest.raises(SystemExit):
        parse(["x", "--mode", "c"])


def test_commands_register_the_same_way_and_default_under_fusedlens_out():
    parser = build_parser()
    for cmd, out in (["demo"], "fusedlens_out/demo"), (["run", "pydoc"], "fusedlens_out/run"), \
            (["probe"], "fusedlens_out/probe"), (["tuned", "train"], "fusedlens_out/tuned"):
        assert parser.parse_args(cmd).out == out, cmd
    run = parser.parse_args(["run", "pydoc", "--backend", "cpu"])
    assert run.backend == "cpu" and run.progress is True
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "pydoc", "--backend", "fortran"])  # choices come from the backend registry


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "pydoc", "--seq-len", "x"])
    assert e.value.code == 2
