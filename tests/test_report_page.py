"""report.page: numeric arrays, the vocabulary of a page and the page itself (inline, JSON-safe)."""
import base64
import json
import re

import numpy as np
import torch

from fusedlens.report.page import ASSETS, Viewable, Vocab, array, notebook_html, page_html, probabilities


def page_data(page: str) -> dict:
    """The JSON a page carries, as its script reads it."""
    m = re.search(r"<script type='application/json' id='fl-data'>(.*?)</script>", page, re.S)
    return json.loads(m.group(1))


def decode(a: dict) -> np.ndarray:
    x = np.frombuffer(base64.b64decode(a["b64"]), {"f32": "<f4", "i32": "<i4", "u16": "<u2"}[a["dtype"]])
    return np.where(x == a["nan"], np.nan, x * a["scale"]) if "scale" in a else x


def test_arrays_round_trip_with_nan_and_large_ids():
    x = torch.randn(7, 5, dtype=torch.float64)
    x[2, 3] = float("nan")
    got = decode(array(x))
    want = x.reshape(-1).float().numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
    ids = torch.randint(0, 262_144, (3, 11))
    assert np.array_equal(decode(array(ids, "i32")), ids.reshape(-1).numpy())


def test_probabilities_to_a_65534th_and_nan():
    p = torch.rand(1000, dtype=torch.float64)
    p[0], p[1], p[2] = 0.0, 1.0, float("nan")
    got = decode(probabilities(p))
    assert np.abs(got[3:] - p[3:].numpy()).max() <= 0.5 / 65534 + 1e-12 and got[0] == 0 and got[1] == 1
    assert np.isnan(got[2])


class Tok:
    def decode(self, ids):
        return {5: "</script><b>x", 9: " the"}.get(ids[0], f"t{ids[0]}")


def test_a_page_holds_any_token_text_and_no_nan():
    vocab = Vocab(Tok())
    assert vocab.use(torch.tensor([5, -100, 9])) == [5, -100, 9]
    views = [{"type": "table", "head": ["a"], "rows": [[float("nan")], [{"t": vocab.text(5)}]]}]
    page = page_html("t </script>", views, vocab, {"x": float("inf"), "model": {"model": "M", "d": 3}, "n": 2.123456,
                                                   "alphas": [1, 2], "ok": True})
    assert page.count("</script>") == 2  # the data's own "</script>" cannot end its element
    data = page_data(page)
    assert data["vocab"] == {"5": "</script><b>x", "9": " the"}
    assert data["views"][0]["rows"] == [[None], [{"t": "</script><b>x"}]]
    assert data["meta"] == {"model": "M", "n": 2.1235, "ok": True}  # the header: plain facts only
    # self-contained: styles and script inline, nothing fetched
    assert (ASSETS / "report.js").read_text() in page and not re.search(r"<(script|link)[^>]+(src|href)=.(?!data:)", page)


def test_viewable_writes_the_page_and_a_notebook_iframe(tmp_path):
    class R(Viewable):
        tokenizer = Tok()
        meta = {"n": 1}

        def views(self, vocab):
            return [{"type": "text", "text": vocab.text(vocab.use([9])[0])}]

    path = R().save_html(str(tmp_path / "a" / "r.html"))
    data = page_data(open(path, encoding="utf-8").read())
    assert data["views"] == [{"type": "text", "text": " the"}] and data["meta"] == {"n": 1}
    cell = R()._repr_html_()
    assert cell.startswith("<iframe srcdoc=") and "fl-data" in cell and "<script" not in cell  # escaped inside
    assert notebook_html("<p>", 300).endswith("height:300px;border:1px solid #ddd\" sandbox=\"allow-scripts\"></iframe>")
