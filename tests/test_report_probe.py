"""The probe page: its curves and tables hold the result's own numbers (held-out R² per site, target and
lag; train / validation per target; class accuracy and macro-F1), and `fusedlens probe` writes it."""
import pytest
import torch

from fusedlens.cli import main
from fusedlens.core.models import LensModel
from fusedlens.probe import fit_probes
from fusedlens.report.page import REPORT, Vocab
from test_probe_fit import _file
from test_report_page import page_data
from tiny_models import tiny_model


def probe_result():
    """A tiny probe with every kind of curve: two lags of the logit and of a file's numeric target, and a class."""
    lm = LensModel.from_hf(tiny_model("llama"))
    return fit_probes(lm, user_targets=_file(lm), train_tokens=160, heldout_tokens=80, seq_len=64, targets=("logit",),
                      lags=(0, -1), folds=2, alphas=[0.05], progress=False)


@pytest.fixture(scope="module")
def result():
    return probe_result()


def by_title(views, title):
    found = [v for v in views if v.get("title", "").startswith(title)]
    assert len(found) == 1, [v.get("title") for v in views]
    return found[0]


def test_the_curves_are_the_fits(result):
    assert result.targets == ["logit@lag0", "num@lag0", "logit@lag-1", "num@lag-1"]
    views = result.views(Vocab())
    held = by_title(views, "held-out R² per site")
    assert held["x"] == result.sites and [s["name"] for s in held["series"]] == result.targets
    for j, s in enumerate(held["series"]):
        assert s["y"] == [result.fits[i][j]["r2_heldout"] for i in range(len(result.sites))]
    tabs = by_title(views, "each target")["tabs"]
    assert [t["label"] for t in tabs] == result.targets
    for j, tab in enumerate(tabs):
        lines, table = tab["views"]
        fits = [f[j] for f in result.fits]
        for series, key in zip(lines["series"], ("r2_train", "r2_val", "r2_heldout")):
            assert series["y"] == [f[key] for f in fits]
        assert [row[0] for row in table["rows"]] == result.sites
        assert [row[1:] for row in table["rows"]] == [[f["n_train"], f["rank"], f["lam"], f["alpha"], f["r2_train"],
                                                       f["r2_val"], f["r2_heldout"]] for f in fits]
    classes = by_title(views, "class targets")
    assert list(result.classes) == ["label@lag0", "label@lag-1"]
    want = [(f"{name}: {label}", [s[key] for s in c["sites"]]) for name, c in result.classes.items()
            for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))]
    assert [(s["name"], s["y"]) for s in classes["series"]] == want
    claims = by_title(views, "claims")
    assert [r[0] for r in claims["rows"]] == [c["statement"] for c in result.claims()]


def test_the_page_carries_the_views(result, tmp_path):
    path = result.save_html(str(tmp_path / "p.html"))
    data = page_data(open(path).read())
    assert data["title"] == "fusedlens: ridge probes" and data["meta"]["train_tokens"] == 160
    held = by_title(data["views"], "held-out R² per site")
    assert held["series"][2]["y"] == pytest.approx([f[2]["r2_heldout"] for f in result.fits], abs=1e-12)
    assert "iframe" in result._repr_html_()


def test_cli_writes_the_report(model_dir, corpus_file, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "--model", model_dir, "--text", corpus_file, "--train-tokens", "120", "--heldout-tokens",
                 "60", "--seq-len", "40", "--folds", "2", "--targets", "logit,entropy", "--lag", "0", "--lag", "-1",
                 "--out", str(out), "--no-progress"]) == 0
    assert str(out / REPORT) in capsys.readouterr().out
    data = page_data((out / REPORT).read_text())
    held = by_title(data["views"], "held-out R² per site")
    assert [s["name"] for s in held["series"]] == ["logit@lag0", "entropy@lag0", "logit@lag-1", "entropy@lag-1"]
    assert all(isinstance(y, float) for s in held["series"] for y in s["y"])
    assert torch.tensor(held["series"][0]["y"]).le(1).all()
