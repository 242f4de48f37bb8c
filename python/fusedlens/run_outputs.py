"""What `fusedlens run` leaves behind: summary.json, throughput.json and the pictures."""
from __future__ import annotations

import html
import os

import torch

from . import report

GRID_TOKENS = 24
PASSAGE_TOKENS = 160


def finish(cfg, lm, capture, agg, probes, timers, tokens, rank, world, wall_seconds) -> dict:
    """All-reduce the sums over ranks; rank 0 writes the outputs. Returns the summary."""
    seconds = dict(timers.seconds)
    if world > 1:
        import torch.distributed as dist

        agg.all_reduce()
        if probes is not None:
            probes.all_reduce()
        sec = torch.tensor([seconds[k] for k in seconds], dtype=torch.float64)
        dist.all_reduce(sec, op=dist.ReduceOp.MAX)  # the ranks run side by side: the slowest sets the pace
        seconds = dict(zip(seconds, sec.tolist()))
    rows = agg.summary()
    if probes is not None:
        for row, r2 in zip(rows, probes.summary_by_site()):
            row.update(r2)
    summary = {"model": lm.describe(), "corpus": cfg.corpus, "tokens": agg.tokens, "seq_len": cfg.seq_len,
               "sites": agg.sites, "processes": world, "mean_prediction_depth": agg.mean_prediction_depth,
               "lens": "tuned" if cfg.tuned else "logit", "layers": rows}
    if rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        report.write_json(summary, os.path.join(cfg.out, "summary.json"))
        busy = sum(seconds.values())
        report.write_json({"tokens": agg.tokens, "seconds": seconds, "busy_seconds": busy,
                           "tokens_per_second": agg.tokens / busy if busy else None,
                           "share": {k: v / busy for k, v in seconds.items()} if busy else None,
                           "wall_seconds_this_process": wall_seconds, "processes": world},
                          os.path.join(cfg.out, "throughput.json"))
        title = f"{'tuned' if cfg.tuned else 'logit'} lens, {lm.describe()['model']}, {agg.tokens} tokens"
        report.plot_layer_curves(rows, os.path.join(cfg.out, "layers.png"), title=title)
        _pictures(cfg, lm, capture)
    return summary


def _pictures(cfg, lm, capture) -> None:
    """The lens grid of the prompt and the prediction-depth passage, through the run's lens (logit or tuned)."""
    from .corpus import iter_sequences
    from .lens import LogitLens
    from .runner import _tuned_lens

    layers = [int(s.split(".")[1]) for s in capture.sites if s.startswith("resid.")]
    lens = LogitLens(lm, layers=layers, mid=cfg.mid, embed=cfg.embed, k=1, backend=cfg.backend, compute=cfg.compute,
                     translate=_tuned_lens(cfg, lm, capture.sites))
    if cfg.prompt:
        prompt_ids = lens.sequences(cfg.prompt)[0]
    else:
        prompt_ids = next(iter_sequences(lm.tokenizer, cfg.corpus, cfg.seq_len, field=cfg.field)).ids
    result = lens.run(prompt_ids[:max(GRID_TOKENS, PASSAGE_TOKENS)])
    name = "tuned" if cfg.tuned else "logit"
    report.plot_lens_grid(result, lm.tokenizer, os.path.join(cfg.out, "grid.png"), seq=0, max_positions=GRID_TOKENS,
                          title=f"{name} lens, the prompt: top-1 token per site (bold = true next token)")
    write_depth_html(result, lm.tokenizer, os.path.join(cfg.out, "prediction_depth.html"), PASSAGE_TOKENS)


def write_depth_html(result, tokenizer, path: str, max_tokens: int = PASSAGE_TOKENS) -> None:
    """A passage with each token coloured by the prediction depth of the prediction made at it.

    Depth d (0 = settled from the first site) is shaded from pale (early) to dark
    (late); hovering a token shows the site where it settled and the final top-1.
    """
    seq = result.sequence(0)
    depth = seq.stats.prediction_depth[:max_tokens]
    n_sites = len(result.sites)
    toks = report.token_strings(tokenizer, seq.input_ids[:max_tokens])
    finals = report.token_strings(tokenizer, seq.stats.top1[-1][:max_tokens])
    spans = []
    for tok, d, fin in zip(toks, depth.tolist(), finals):
        level = d / max(n_sites - 1, 1)
        colour = f"hsl(210, 80%, {95 - 60 * level:.0f}%)"
        text_colour = "#fff" if level > 0.6 else "#000"
        tip = f"settled at {result.sites[d]} (depth {d}); final top-1 {fin!r}"
        spans.append(f'<span style="background:{colour};color:{text_colour}" title="{html.escape(tip)}">'
                     f'{html.escape(tok).replace(chr(10), "&#8629;<br>")}</span>')
    legend = " ".join(f'<span style="background:hsl(210, 80%, {95 - 60 * i / 4:.0f}%)">&nbsp;'
                      f'{result.sites[round(i * (n_sites - 1) / 4)]}&nbsp;</span>' for i in range(5))
    page = ("<!doctype html><meta charset='utf-8'><title>prediction depth</title>"
            "<body style='font-family:monospace;max-width:60em;line-height:1.8'>"
            f"<h3>Prediction depth: the first site from which the lens' top-1 equals the final top-1</h3>"
            f"<p>{legend}</p><p>{''.join(spans)}</p></body>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
