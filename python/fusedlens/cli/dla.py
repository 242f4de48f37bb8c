"""`fusedlens dla`: direct logit attribution of prompts to an answer (minus a counterfactual) by every block,
head and, on request, neuron; the tokens each component promotes and suppresses."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.backends import BACKENDS
from ..core.checks import check_output_dir
from ..core.backends import BACKEND_HELP
from ..core.fields import option
from ..core.models import ModelOptions
from .options import add_arguments, from_args, out_default

HELP = "direct logit attribution: each block's, head's and neuron's direct effect on the logits"


@dataclass(kw_only=True)
class DLAConfig(ModelOptions):
    prompt: list[str] = option([], "a prompt (repeatable)")
    prompts: str | None = option(None, "JSONL of {prompt, answer, counterfactual?} (instead of --prompt)")
    answer: str | None = option(None, "one token read at each prompt's last position (e.g. ' Mary')")
    counterfactual: str | None = option(None, "one token: the effect on answer minus counterfactual (e.g. ' John')")
    components: str = option("attn,mlp,head", "kinds (embed, attn, mlp, head, neuron) and/or names (head.9.3)")
    sources: str | None = option(None, "heads whose effect is also split by source position (head.23.3,...)")
    k: int = option(10, "promoted / suppressed tokens per component over the full vocabulary (0: none)")
    top: int = option(15, "components listed")
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)
    out: str = option(out_default("dla"), "output folder")


def _read_prompts(cfg: DLAConfig):
    from ..core.files import read_jsonl

    if cfg.prompts and cfg.prompt:
        raise ValueError("prompt, prompts: give --prompt or --prompts, not both")
    if cfg.prompts:
        if cfg.answer is not None or cfg.counterfactual is not None:
            raise ValueError("answer, counterfactual: with --prompts they come from the file's lines")
        items = read_jsonl("prompts", cfg.prompts, ("prompt", "answer"))
        for it in items:
            for key in ("prompt", "answer", "counterfactual"):
                if key in it and not (isinstance(it[key], str) and it[key]):
                    raise ValueError(f"prompts: {it['_where']}: {key!r} must be a non-empty text")
            if it.get("counterfactual") == it["answer"]:
                raise ValueError(f"prompts: {it['_where']}: the counterfactual is the answer; give a different token")
        counters = [it.get("counterfactual") for it in items]
        if any(c is None for c in counters) and any(c is not None for c in counters):
            raise ValueError("prompts: give a counterfactual on every line or on none")
        return [it["prompt"] for it in items], [it["answer"] for it in items], \
            None if counters[0] is None else counters
    if not cfg.prompt:
        raise ValueError("prompt: give at least one --prompt (or --prompts FILE)")
    if any(not p.strip() for p in cfg.prompt):
        raise ValueError("prompt: expected a non-empty text")
    if cfg.counterfactual is not None and cfg.answer is None:
        raise ValueError("counterfactual: needs --answer")
    if cfg.counterfactual is not None and cfg.counterfactual == cfg.answer:
        raise ValueError(f"counterfactual: {cfg.counterfactual!r} is the answer; every attribution would be 0: "
                         "give a different token")
    return cfg.prompt, cfg.answer, cfg.counterfactual


def main(args) -> int:
    import os

    from ..dla import direct_logit_attribution, parse_components
    from ..report.dla import default_kind, format_dla_table, write_dla_outputs
    from ..report.page import REPORT, Vocab, write_page

    cfg = from_args(DLAConfig, args)
    for name in ("k", "top"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}: expected >= 0, got {getattr(cfg, name)}")
    prompts, answer, counter = _read_prompts(cfg)
    components = [c.strip() for c in cfg.components.split(",") if c.strip()]
    parse_components(components)
    check_output_dir("out", cfg.out, "dla")
    lm = cfg.load()
    sources = [h.strip() for h in cfg.sources.split(",") if h.strip()] if cfg.sources else []
    result = direct_logit_attribution(lm, prompts, components, answer=answer, counterfactual=counter, k=cfg.k,
                                      backend=cfg.backend, sources=sources)
    kind = default_kind(result)
    print(format_dla_table(result, kind, cfg.top, lm.tokenizer))
    paths = write_dla_outputs(result, cfg.out, kind, lm.tokenizer, cfg.top)
    vocab = Vocab(lm.tokenizer)
    paths.append(write_page(os.path.join(cfg.out, REPORT), result.html_title, result.views(vocab, kind), vocab,
                            {"model": cfg.model or "smollm2-135m", "prompts": len(prompts), "kind": kind}))
    print("wrote " + ", ".join(paths) + " (report.html: the interactive page; open it in a browser)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("dla", help=HELP)
    add_arguments(p, DLAConfig)
    p.set_defaults(func=main)
