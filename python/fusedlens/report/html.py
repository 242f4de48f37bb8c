"""The prediction-depth passage: a page with each token coloured by where its prediction settled."""
from __future__ import annotations

import html

from .common import token_strings

PASSAGE_TOKENS = 160


def write_depth_html(result, tokenizer, path: str, max_tokens: int = PASSAGE_TOKENS) -> None:
    """A passage with each token coloured by the prediction depth of the prediction made at it.

    Depth d (0 = settled from the first site) is shaded from pale (early) to dark
    (late); hovering a token shows the site where it settled and the final top-1.
    """
    seq = result.sequence(0)
    depth = seq.stats.prediction_depth[:max_tokens]
    n_sites = len(result.sites)
    toks = token_strings(tokenizer, seq.input_ids[:max_tokens])
    finals = token_strings(tokenizer, seq.stats.top1[-1][:max_tokens])
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
