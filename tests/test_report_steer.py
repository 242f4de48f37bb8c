"""The steering pages: a generation's two continuations side by side; a scan's sites × coefficients grids
of perplexity ratio and projection, each cell's samples on click and every cell's samples per site; the
`steer` command writes one report.html for what it ran."""
import math

import numpy as np
import pytest
import torch

from fusedlens import steer
from fusedlens.cli import main
from fusedlens.core.models import LensModel
from fusedlens.report.page import REPORT, Vocab
from test_report_page import decode, page_data
from test_report_probe import by_title
from tiny_models import VOCAB, tiny_model, tiny_tokenizer

SITES, COEFS, PROMPTS = ["resid.0", "resid.1", "resid.2"], [-4.0, 0.0, 4.0], ["once upon", "abc"]


def tiny():
    return LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())


def generation():
    lm = tiny()
    return steer.generate(lm, "hello world", torch.randn(lm.d_model), "resid.1", 8.0, n_tokens=6)


def scan_result():
    lm = tiny()
    return steer.scan(lm, torch.randn(lm.d_model), SITES, COEFS, corpus=torch.randint(3, VOCAB, (80,)), eval_tokens=60,
                      seq_len=16, prompts=PROMPTS, n_tokens=4)


@pytest.fixture(scope="module")
def scanned():
    return scan_result()


def test_generation_side_by_side():
    g = generation()
    samples, settings = g.views(Vocab())
    assert [c["texts"] for c in samples["columns"]] == [[g.unsteered], [g.steered]]
    assert samples["title"] == "prompt: hello world" and "+8 × v at resid.1" in samples["columns"][1]["title"]
    parted = [i for i, (a, b) in enumerate(zip(g.unsteered_ids, g.steered_ids)) if a != b]
    assert (f"part at generated token {parted[0]}" if parted else "the same tokens") in samples["note"]
    assert settings["rows"][0][:3] == ["resid.1", 8.0, g.meta["vector_norm"]]


def test_scan_grids_and_samples(scanned):
    r = scanned
    ratio, proj, samples = r.views(Vocab())
    for grid in (ratio, proj):
        assert grid["rows"] == SITES and grid["cols"] == ["-4", "+0", "+4"]
        np.testing.assert_allclose(decode(grid["tips"]["perplexity"]), r.ppl.reshape(-1).numpy(), rtol=1e-6)
        for i, s in enumerate(SITES):
            for j, c in enumerate(COEFS):
                d = grid["details"][f"{i},{j}"]
                assert s in d["title"] and f"{c:+g}" in d["title"]
                want = [[p, r.base_samples[k], r.samples[k][i][j]] for k, p in enumerate(PROMPTS)]
                assert d["tables"][0]["rows"] == want
    np.testing.assert_allclose(decode(ratio["layers"][0]["values"]), np.log2(r.ppl_ratio.reshape(-1).numpy()),
                               rtol=1e-5, atol=1e-6)
    assert ratio["cell_text"] == [f"{float(v):.2f}" for v in r.ppl_ratio.reshape(-1)]
    assert all(t == "1.00" for t in ratio["cell_text"][1::3])  # c = 0: the unsteered run
    shift = (r.projection - r.base_projection).reshape(-1).numpy()
    np.testing.assert_allclose(decode(proj["layers"][0]["values"]), shift, rtol=1e-5, atol=1e-4)
    assert [t["label"] for t in samples["tabs"]] == SITES
    for i, tab in enumerate(samples["tabs"]):
        cols = tab["views"][0]["columns"]
        assert [c["title"] for c in cols] == ["unsteered", "-4", "+0", "+4"]
        assert cols[0]["texts"] == r.base_samples
        assert [c["texts"] for c in cols[1:]] == [[r.samples[k][i][j] for k in range(len(PROMPTS))] for j in range(3)]
    assert math.isfinite(r.base_ppl)


def test_cli_writes_one_page_for_generation_and_scan(model_dir, corpus_file, tmp_path, capsys):
    out = tmp_path / "steer"
    assert main(["steer", "--model", model_dir, "--plus", "good", "--minus", "bad", "--prompt", "hello", "--site",
                 "resid.1", "--n-tokens", "4", "--scan-sites", "0-2:2", "--scan-coefs=-2,3", "--eval-corpus",
                 corpus_file, "--eval-tokens", "40", "--seq-len", "16", "--sample-prompts", "once upon",
                 "--sample-tokens", "3", "--out", str(out), "--no-progress"]) == 0
    assert str(out / REPORT) in capsys.readouterr().out
    data = page_data((out / REPORT).read_text())
    assert [v["type"] for v in data["views"]] == ["samples", "table", "heatmap", "heatmap", "tabs"]
    assert data["views"][2]["rows"] == ["resid.0", "resid.2"] and data["views"][2]["cols"] == ["-2", "+3"]
    assert data["meta"]["vector"] == "ActAdd 'good' - 'bad'"
