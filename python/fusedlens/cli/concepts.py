"""`fusedlens concepts`: concept geometry (Park et al. 2024) of a model's embedding and unembedding — within- and
between-concept cosines and embedding–unembedding alignment, Euclidean and causal."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_output_dir
from ..core.fields import option
from ..core.models import ModelOptions
from .options import add_arguments, from_args, out_default

HELP = "concept geometry: cosines of unembedding/embedding differences of concept pairs (Park et al. 2024)"


@dataclass(kw_only=True)
class ConceptsConfig(ModelOptions):
    concepts: list[str] = option([], "a JSON file {\"concept\": [[\"x\", \"y\"], ...]} or built-in names "
                                     "(comma-separated; repeatable); default: every built-in list")
    form: str = option("auto", "token form of the words: auto (\" word\", else \"word\"), space or bare",
                       choices=("auto", "space", "bare"))
    list_builtin: bool = option(False, "print the built-in concept lists and exit")
    name: str = option("concepts", "file name stem of the outputs")
    out: str = option(out_default("concepts"), "output folder")
    progress: bool = option(True, "no progress bar")


def main(args) -> int:
    from ..concepts import BUILTIN, concept_geometry
    import os

    from ..report.concepts import format_concepts_table, write_concepts_outputs
    from ..report.page import REPORT

    cfg = from_args(ConceptsConfig, args)
    if cfg.list_builtin:
        for c, pairs in BUILTIN.items():
            print(f"{c} ({len(pairs)}): " + ", ".join(f"{x}→{y}" for x, y in pairs))
        return 0
    if not cfg.name or "/" in cfg.name:
        raise ValueError(f"name: expected a file name stem, got {cfg.name!r}")
    from ..concepts.lists import resolve

    lists = resolve(cfg.concepts or None)  # bad names or files fail before the model loads
    check_output_dir("out", cfg.out, "concepts")
    lm = cfg.load()
    result = concept_geometry(lm, lists, form=cfg.form, progress=cfg.progress)
    print(format_concepts_table(result))
    written = write_concepts_outputs(result, cfg.out, cfg.name)
    written.append(result.save_html(os.path.join(cfg.out, REPORT)))
    print("wrote " + ", ".join(written) + " (open report.html in a browser: click a cell for its pairs)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("concepts", help=HELP)
    add_arguments(p, ConceptsConfig)
    p.set_defaults(func=main)
