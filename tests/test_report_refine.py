"""The guess-then-refine page: the shares, masses, rates and depth curves it draws are the result's, per
lens; the tasks tab holds the answers' and multiple choice's curves; `fusedlens refine` writes it."""
import numpy as np
import pytest
import torch

from fusedlens.cli import main
from fusedlens.core.models import LensModel
from fusedlens.refine.api import refine
from fusedlens.report.page import REPORT, Vocab
from fusedlens.tuned.lens import TunedLens
from test_report_page import decode, page_data
from test_report_probe import by_title
from tiny_models import VOCAB, tiny_model, tiny_tokenizer


def refine_result():
    """Logit and (identity) tuned lens, two classes, and both tasks on a tiny model."""
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    ids = torch.randint(3, VOCAB, (300,))
    ids[::3] = 40  # a frequent token
    tuned = TunedLens.from_model(lm)
    with torch.no_grad():
        for p in tuned.parameters():
            p.normal_(0, 0.05)  # not the logit lens: the two tabs differ
    answers = [{"prompt": "abc", "answer": "de", "_where": "a:1"}, {"prompt": "xyz", "answer": "q", "_where": "a:2"}]
    choices = [{"prompt": "pick:", "options": ["A", "B"], "answer": "B", "_where": "c:1"}]
    return refine(lm, ids, tokens=120, seq_len=50, buckets=[2, 10], tuned=tuned, answers=answers, choices=choices,
                  classes={i: ("even" if i % 2 == 0 else "odd") for i in range(VOCAB)}, progress=False)


@pytest.fixture(scope="module")
def result():
    return refine_result()


def grid(a):
    return decode(a).astype(np.float64)


def nan_list(rows):
    return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64).reshape(-1)


def right_by_site(hist, tokens):
    """Independently: the share of tokens whose depth to correct is at most each site."""
    return list(np.cumsum(hist[:-1]) / tokens)


def test_the_views_hold_the_summaries(result):
    views = result.views(Vocab())
    top = by_title(views, "share of top-1")
    assert [s["name"] for s in top["series"]] == [f"{lens}: {b}" for lens in ("logit", "tuned") for b in result.buckets]
    for s in top["series"]:
        lens, b = s["name"].split(": ")
        assert s["y"] == [row[result.buckets.index(b)] for row in result.lenses[lens]["top1_share"]]
    tabs = views[-1]["tabs"]
    assert [t["label"] for t in tabs] == ["logit lens", "tuned lens", "answers and multiple choice"]
    for lens, tab in zip(("logit", "tuned"), tabs):
        s = result.lenses[lens]
        heat, corpus, depth = tab["views"]
        assert heat["rows"] == result.sites and heat["cols"] == result.buckets
        for layer, key in zip(heat["layers"], ("top1_share", "mass", "final_differs_rate", "changes_later_rate")):
            np.testing.assert_allclose(grid(layer["values"]), nan_list(s[key]), rtol=1e-6, equal_nan=True)
        assert corpus["labels"] == result.buckets and corpus["values"] == s["target_share"]
        want = [right_by_site(s["depth_to_correct_hist"], s["tokens"])] + \
            [right_by_site(c["hist"], c["tokens"]) for c in s["depth_by_class"].values()]
        assert [x["name"].split(" (")[0] for x in depth["series"]] == ["all tokens", "even", "odd"]
        for series, w in zip(depth["series"], want):
            np.testing.assert_allclose(series["y"], w, rtol=1e-12)
    mass = [grid(t["views"][0]["layers"][1]["values"]) for t in tabs[:2]]
    assert not np.array_equal(mass[0], mass[1])  # the tuned lens' own numbers, not the logit lens' again
    answers, choices = tabs[2]["views"]
    for lens in ("logit", "tuned"):
        a = result.tasks[lens]["answers"]["first_token"]
        got = next(x for x in answers["series"] if x["name"].startswith(f"{lens}: answer's first token"))
        assert got["y"] == pytest.approx(right_by_site(a["hist"], a["tokens"]))
        c = result.tasks[lens]["choices"]
        got = {x["name"]: x["y"] for x in choices["series"] if x["name"].startswith(lens)}
        assert got == {f"{lens}: top-1 is an option": c["format_share"],
                       f"{lens}: most probable option is right": c["answer_share"]}


def test_cli_writes_the_report(model_dir, corpus_file, tmp_path, capsys):
    out = tmp_path / "refine"
    assert main(["refine", "--model", model_dir, "--text", corpus_file, "--tokens", "100", "--seq-len", "50",
                 "--buckets", "2,10", "--out", str(out), "--no-progress"]) == 0
    assert str(out / REPORT) in capsys.readouterr().out
    data = page_data((out / REPORT).read_text())
    tabs = data["views"][-1]["tabs"]
    assert [t["label"] for t in tabs] == ["logit lens"]
    shares = grid(tabs[0]["views"][0]["layers"][0]["values"]).reshape(-1, 3)
    np.testing.assert_allclose(shares.sum(1), 1, rtol=1e-5)  # every top-1 falls in one bucket
