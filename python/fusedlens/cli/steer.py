"""`fusedlens steer`: add c · v to a residual site (activation addition) and generate with and without
it side by side; or scan sites × coefficients for held-out perplexity, read-site projection and samples. Either
way report.html in --out shows what ran (both, when both did)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.checks import check_output_dir
from ..core.fields import option
from ..core.models import ModelOptions
from .options import add_arguments, from_args, out_default, parse_positions

HELP = "steering: add a vector (directions file, tensor file or ActAdd --plus/--minus) to the residual stream"
KINDS = ("mean_diff", "pca", "lda")


@dataclass(kw_only=True)
class SteerConfig(ModelOptions):
    prompt: str | None = option(None, "the prompt to continue without and with the vector")
    site: str = option("resid.6", "steering site: embed, resid.i or mid.i")
    coef: float = option(5.0, "coefficient c of c * v")
    plus: str | None = option(None, "ActAdd: the positive prompt (v = h(plus) - h(minus) at the front positions)")
    minus: str | None = option(None, "ActAdd: the negative prompt (the shorter one is padded with space tokens)")
    directions: str | None = option(None, "a `fusedlens directions` file: v is its --kind vector at the site")
    kind: str = option("mean_diff", "which directions vector", choices=KINDS)
    vector_file: str | None = option(None, "a torch file holding a [d] tensor")
    positions: str | None = option(None, "prompt positions for a single vector, e.g. 0-3 or 1,4 (default: every "
                                         "position, generated ones too)")
    n_tokens: int = option(30, "tokens generated")
    sample: bool = option(False, "sample instead of greedy (both runs from the same --seed)")
    seed: int = option(0, "sampling seed")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "sampling nucleus")
    scan_sites: str | None = option(None, "scan these sites (e.g. resid.2,resid.6 or a layer range 2-20:4)")
    scan_coefs: str = option("-10,-5,0,5,10", "scan these coefficients")
    eval_corpus: str = option("pydoc", "held-out corpus: pydoc (its last --eval-tokens tokens) or a text file")
    eval_tokens: int = option(2048, "held-out tokens whose perplexity each cell measures")
    seq_len: int = option(128, "tokens per eval window")
    read_site: str | None = option(None, "site whose mean projection is read (default: the last scanned site)")
    sample_prompts: list[str] = option([], "scan: prompts continued in every cell (repeatable; default: two built-in)")
    sample_tokens: int = option(20, "scan: tokens generated per sample")
    batch_size: int = option(16, "rows (cells x eval windows) per forward")
    out: str = option(out_default("steer"), "output folder")
    progress: bool = option(True, "no progress bar")


def parse_sites(spec: str) -> list[str]:
    """"resid.2,embed,mid.4,7" (a bare number is resid.N) or "a-b:step" (resid layers a to b inclusive);
    layers are checked against the model later, by the steering functions."""
    import re

    spec = spec.strip()
    m = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?", spec)
    if m:
        a, b, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        if step < 1 or a > b:
            raise ValueError(f"scan_sites: {spec!r} selects no layer")
        return [f"resid.{i}" for i in range(a, b + 1, step)]
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items or not all(re.fullmatch(r"embed|(resid|mid)\.\d+|\d+", s) for s in items):
        raise ValueError(f"scan_sites: expected sites like resid.2,mid.4,embed or a range 2-20:4, got {spec!r}")
    return [f"resid.{s}" if s.isdigit() else s for s in items]


def parse_numbers(name: str, spec: str) -> list[float]:
    try:
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected numbers separated by commas, got {spec!r}") from None


def main(args) -> int:
    from ..core.files import write_json
    from ..report.page import REPORT, Vocab, write_page
    from ..report.steer import format_generation, format_scan_table, write_scan_outputs
    from .. import steer
    from ..steer.scan import DEFAULT_PROMPTS
    from ..steer.generate import check_sampling
    from ..steer.vectors import check_coef, check_site

    cfg = from_args(SteerConfig, args)
    sources = [n for n, v in (("plus/minus", cfg.plus or cfg.minus), ("directions", cfg.directions),
                              ("vector_file", cfg.vector_file)) if v]
    if len(sources) != 1:
        raise ValueError("vector: give exactly one of --plus/--minus, --directions or --vector-file"
                         + (f" (got {', '.join(sources)})" if sources else ""))
    if (cfg.plus is None) != (cfg.minus is None):
        raise ValueError("plus, minus: ActAdd needs both --plus and --minus")
    if not cfg.scan_sites and cfg.prompt is None:
        raise ValueError("prompt: required (--prompt) unless --scan-sites")
    if cfg.prompt is not None and not cfg.prompt.strip():
        raise ValueError("prompt: expected a non-empty text")
    positions = parse_positions("positions", cfg.positions) if cfg.positions else None
    if positions is not None and min(positions) < 0:
        raise ValueError(f"positions: expected positions from the start (0, 1, ...), got {cfg.positions!r}")
    sites = parse_sites(cfg.scan_sites) if cfg.scan_sites else []
    coefs = [check_coef(c, "scan_coefs") for c in parse_numbers("scan_coefs", cfg.scan_coefs)]
    if sites and not coefs:
        raise ValueError("scan_coefs: expected at least one coefficient")
    check_coef(cfg.coef, "coef")
    check_sampling(cfg.n_tokens, cfg.temperature, cfg.top_p)
    for name in ("eval_tokens", "seq_len", "sample_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}: expected >= 1, got {getattr(cfg, name)}")
    corpus = "pydoc" if cfg.eval_corpus == "pydoc" or not sites else _read_corpus(cfg.eval_corpus)
    vector = steer.load_tensor(cfg.vector_file) if cfg.vector_file else None  # files read before the model loads
    if cfg.directions:
        for site in [cfg.site] * (cfg.prompt is not None) + sites + ([cfg.read_site] if cfg.read_site else []):
            steer.load_directions(cfg.directions, cfg.kind, site)
    check_output_dir("out", cfg.out, "steer")
    lm = cfg.load()
    for name, names in (("site", [cfg.site] if cfg.prompt is not None else []), ("scan_sites", sites),
                        ("read_site", [cfg.read_site] if cfg.read_site else [])):
        for site in names:
            check_site(lm, site, name)
    want = list(dict.fromkeys([cfg.site] * (cfg.prompt is not None) + sites + ([cfg.read_site] if cfg.read_site else [])))
    if cfg.plus is not None:
        vecs = steer.actadd_vectors(lm, cfg.plus, cfg.minus, want)
        source = {"actadd": {"plus": cfg.plus, "minus": cfg.minus}}
    elif cfg.directions:
        vecs = {s: steer.load_directions(cfg.directions, cfg.kind, s, lm) for s in want}
        source = {"directions": cfg.directions, "kind": cfg.kind}
    else:
        v = steer.check_vector(lm, vector, "vector_file")
        vecs = {s: v for s in want}
        source = {"vector_file": cfg.vector_file}
    title = (f"ActAdd {cfg.plus!r} - {cfg.minus!r}" if cfg.plus is not None else
             f"{cfg.kind} from {os.path.basename(cfg.directions)}" if cfg.directions else
             os.path.basename(cfg.vector_file))
    written, views, vocab = [], [], Vocab(lm.tokenizer)  # one page for the generation and the scan
    if cfg.prompt is not None:
        r = steer.generate(lm, cfg.prompt, vecs[cfg.site], cfg.site, cfg.coef, n_tokens=cfg.n_tokens,
                           positions=positions, sample=cfg.sample, seed=cfg.seed, temperature=cfg.temperature,
                           top_p=cfg.top_p)
        r.meta.update(source=source, model=lm.describe())
        print(format_generation(r))
        written.append(r.save(os.path.join(cfg.out, "steer.json")))
        views += r.views(vocab)
    if sites:
        r = steer.scan(lm, vecs, sites, coefs, corpus=corpus,
                       eval_tokens=cfg.eval_tokens, seq_len=cfg.seq_len, read_site=cfg.read_site, positions=positions,
                       prompts=cfg.sample_prompts or DEFAULT_PROMPTS, n_tokens=cfg.sample_tokens,
                       sample=cfg.sample, seed=cfg.seed, temperature=cfg.temperature, top_p=cfg.top_p,
                       batch_size=cfg.batch_size, progress=cfg.progress)
        r.meta.update(source=source, eval_corpus=cfg.eval_corpus, model=lm.describe())
        print(format_scan_table(r))
        written += write_scan_outputs(r, cfg.out, title=f"steering scan: {title}")
        views += r.views(vocab)
    written.append(write_page(os.path.join(cfg.out, REPORT), f"fusedlens steer: {title}", views, vocab,
                              {"model": lm.describe()["model"], "vector": title}))
    written.append(os.path.join(cfg.out, "steer_config.json"))
    write_json({"config": dict(vars(cfg))}, written[-1])
    print("wrote " + ", ".join(written) + f" (open {REPORT} in a browser)")
    return 0


def _read_corpus(path: str) -> str:
    from ..core.files import read_text

    if not os.path.exists(path):
        raise ValueError(f"eval_corpus: {path!r} is neither 'pydoc' nor a file")
    return read_text("eval_corpus", path)


def register(sub) -> None:
    p = sub.add_parser("steer", help=HELP)
    add_arguments(p, SteerConfig)
    p.set_defaults(func=main)
