"""The reading-vectors page: accuracy and AUROC curves are the held-out scores per site and kind; a scan is
drawn as the text's tokens coloured by the projection at a chosen site (its best site first) and as a grid;
`fusedlens directions --scan-text` writes both into report.html."""
import json

import numpy as np
import pytest

from fusedlens.directions import KINDS, directions
from fusedlens.report.directions import KIND_LABELS, SCAN_LIMIT
from fusedlens.report.page import REPORT, Vocab
from test_directions_api import TOK, random_pairs, run_cli_with_scan, tiny_lm
from test_report_page import decode, page_data
from test_report_probe import by_title

pytestmark = pytest.mark.filterwarnings("ignore:directions. the pooled covariance is singular")
TEXT = "a good and a bad text"


def directions_result(scan=True):
    lm = tiny_lm("llama")
    r = directions(lm, pairs=random_pairs(14), heldout=0.3, progress=False)
    if scan:
        r.scan(lm, TEXT, "lda")
    return r


@pytest.fixture(scope="module")
def result():
    return directions_result()


def test_curves_are_the_heldout_scores(result):
    views = result.views(Vocab(TOK))
    for metric, title in (("accuracy", "held-out accuracy"), ("auroc", "held-out AUROC")):
        lines = by_title(views, title)
        assert lines["x"] == result.sites
        assert [s["name"] for s in lines["series"]] == [KIND_LABELS[k] for k in KINDS] + ["chance"]
        for k, s in zip(KINDS, lines["series"]):
            assert s["y"] == [h[k][metric] for h in result.heldout]
    table = by_title(views, "per site")
    assert [r[3] for r in table["rows"]] == [f["mean_diff_norm"] for f in result.facts]


def test_the_scan_is_drawn_per_site(result):
    views = result.views(Vocab(TOK))
    tokens = by_title(views, "scan with Fisher / LDA (ridge): the text")
    assert tokens["type"] == "tokens" and "".join(tokens["tokens"]) == TEXT  # one character per token
    scan = result.scans[0]
    assert [s["name"] for s in tokens["series"]] == result.sites
    for i, s in enumerate(tokens["series"]):
        np.testing.assert_allclose(decode(s["values"]), scan["values"][i].numpy(), rtol=1e-6)
        assert (s["vmin"], s["vmax"], s["scale"]) == (-SCAN_LIMIT, SCAN_LIMIT, "diverging")
    acc = [h["lda"]["accuracy"] for h in result.heldout]
    assert acc[tokens["selected"]] == max(acc) and tokens["selected"] == acc.index(max(acc))
    grid = by_title(views, "scan with Fisher / LDA (ridge): sites")
    np.testing.assert_allclose(decode(grid["layers"][0]["values"]), scan["values"].reshape(-1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(decode(grid["layers"][1]["values"]), scan["raw"].reshape(-1).numpy(), rtol=1e-6)


def test_no_scan_no_tokens():
    r = directions_result(scan=False)
    assert r.tokenizer is None and [v["type"] for v in r.views(Vocab())] == ["lines", "lines", "table"]


def test_cli_writes_the_report_with_the_scan(model_dir, tmp_path, capsys):
    out = run_cli_with_scan(model_dir, tmp_path)
    assert str(out / REPORT) in capsys.readouterr().out
    data = page_data((out / REPORT).read_text())
    tokens = by_title(data["views"], "scan with PCA of paired differences (RepE): the text")
    assert tokens["tokens"] == list("good and bad")
    saved = json.loads((out / "directions.json").read_text())
    assert by_title(data["views"], "held-out accuracy")["series"][0]["y"] == \
        [row["mean_diff"]["accuracy"] for row in saved["sites"]]
