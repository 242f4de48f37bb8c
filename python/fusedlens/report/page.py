"""Self-contained interactive pages: the views of one or more results as a single HTML file.

A view is a plain dict ({"type": "heatmap" | "lines" | "bars" | "tokens" | "samples" | "table" |
"text" | "lens" | "tabs", "title": ..., ...}) that assets/report.js draws in the browser with DOM
grids and SVG: no library and no network, so a page opens offline and keeps working when moved.
Large numeric arrays travel as base64 float32 / int32 (`array`), token ids as ids with one
vocabulary of the ids a page uses (`Vocab`). A result class gets `save_html` and `_repr_html_`
(Jupyter: the same page in an iframe sized for a cell) from `Viewable` by defining `views()`.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).with_name("assets")
REPORT = "report.html"


def _tensor(values) -> torch.Tensor:
    return values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def array(values, dtype: str = "f32") -> dict:
    """A numeric array for a view: flattened, little-endian float32 or int32, base64 (NaN survives)."""
    t = _tensor(values)
    np_dtype = {"f32": "<f4", "i32": "<i4"}[dtype]
    data = np.ascontiguousarray(t.reshape(-1).double().numpy().astype(np_dtype))
    return {"b64": base64.b64encode(data.tobytes()).decode("ascii"), "dtype": dtype}


def probabilities(values) -> dict:
    """Probabilities in [0, 1] to 1/65534, NaN kept as 65535 (half the bytes of float32: tooltips show four
    decimals)."""
    t = _tensor(values).double()
    q = torch.round(t.clamp(0, 1).reshape(-1) * 65534)
    q[torch.isnan(t.reshape(-1))] = 65535
    data = q.numpy().astype("<u2")
    return {"b64": base64.b64encode(data.tobytes()).decode("ascii"), "dtype": "u16", "scale": 1 / 65534, "nan": 65535}


class Vocab:
    """The token strings of the ids one page shows (decoded once; the page holds no other ids)."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.ids: set[int] = set()

    def use(self, ids) -> list[int]:
        """Registers token ids (a tensor or list; negatives mean none) and returns them as a list."""
        out = [int(i) for i in (ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else ids)]
        self.ids.update(i for i in out if i >= 0)
        return out

    def text(self, i: int) -> str:
        return self.tokenizer.decode([int(i)]) if self.tokenizer is not None else f"#{int(i)}"

    def table(self) -> dict:
        return {str(i): self.text(i) for i in sorted(self.ids)}


def _plain(x):
    """JSON-safe: tensors to lists, NaN/Inf to None (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _header(meta: dict) -> dict:
    """The line under a page's title: a result's plain facts (a model description by its name; timings,
    tables and other nested values stay in the result's JSON)."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict) and isinstance(v.get("model"), str):
            v = v["model"]
        if isinstance(v, (str, int, float, bool)) and not (isinstance(v, float) and not math.isfinite(v)):
            out[str(k)] = round(v, 4) if isinstance(v, float) else v
    return out


def page_html(title: str, views: list[dict], vocab: Vocab | None = None, meta: dict | None = None) -> str:
    """The whole page: styles, script and data inline."""
    data = {"title": title, "meta": _header(meta or {}), "views": _plain(views),
            "vocab": vocab.table() if vocab is not None else {}}
    # "</" would end the script element early; "<\/" is the same JSON string
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "report.js").read_text(encoding="utf-8")
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            "<link rel='icon' href='data:,'>"  # no favicon request either
            f"<style>{css}</style></head>\n<body><div id='fl-root'></div>\n"
            f"<script type='application/json' id='fl-data'>{payload}</script>\n<script>{js}</script></body></html>\n")


def notebook_html(page: str, height: int = 560) -> str:
    """A page for a notebook cell: in an iframe, so its script runs and its styles stay inside."""
    return (f"<iframe srcdoc=\"{html.escape(page, quote=True)}\" style=\"width:100%;height:{int(height)}px;"
            "border:1px solid #ddd\" sandbox=\"allow-scripts\"></iframe>")


def write_page(path: str, title: str, views: list[dict], vocab: Vocab | None = None, meta: dict | None = None) -> str:
    return _write(path, page_html(title, views, vocab, meta))


def _write(path: str, page: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


class Viewable:
    """`save_html(path)` and Jupyter's `_repr_html_` from one method: `views(vocab)` → list of views.

    A result that knows its tokenizer (set by the call that made it) shows token strings; without
    one, ids (#123). `html_title` names the page."""

    html_title = "fusedlens"
    html_height = 560

    def views(self, vocab: Vocab) -> list[dict]:
        raise NotImplementedError

    def _page(self, tokenizer=None) -> str:
        vocab = Vocab(tokenizer if tokenizer is not None else getattr(self, "tokenizer", None))
        views = self.views(vocab)
        return page_html(self.html_title, views, vocab, getattr(self, "meta", None))

    def save_html(self, path: str, tokenizer=None) -> str:
        """Writes the result's interactive page (self-contained, opens offline) and returns its path."""
        return _write(path, self._page(tokenizer))

    def _repr_html_(self) -> str:
        return notebook_html(self._page(), self.html_height)
