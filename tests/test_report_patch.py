"""The patching pages: every number the grids, tooltips and bars show is the result's (activation patching,
attention knockout, attribution patching and its verification, patchscopes), and the commands write them."""
import json

import numpy as np
import pytest
import torch

from fusedlens import cli
from fusedlens.intervene import attribution_patch, knockout, patch, patchscope
from fusedlens.report import attribution as report_attribution
from fusedlens.report.attribution import attribution_views, patch_page_views
from fusedlens.report.page import REPORT, Vocab
from test_report_page import decode, page_data

CLEAN, BAD = "abcdefg", "abXdefg"


@pytest.fixture(scope="module")
def exact(lm):
    return patch(lm, CLEAN, BAD, "a", "b", kinds=("resid", "attn", "head"))


@pytest.fixture(scope="module")
def atp(lm):
    return attribution_patch(lm, CLEAN, BAD, "a", "b", kinds=("resid", "head", "neuron"), verify=3)


def grid_of(tab):
    (view,) = tab["views"]
    return view


def test_patch_grid_per_kind(exact, lm):
    (tabs,) = exact.views(Vocab())
    assert [t["label"] for t in tabs["tabs"]] == ["resid", "attn", "head"]
    tokens = [lm.tokenizer.decode([i]) for i in lm.tokenizer(BAD)["input_ids"]]
    for tab in tabs["tabs"]:
        kind, g = tab["label"], grid_of(tab)
        want = {"resid": ["embed", "0", "1", "2"], "attn": ["0", "1", "2"],
                "head": [f"{i}.{h}" for i in range(3) for h in range(4)]}[kind]
        assert g["rows"] == want and g["cols"] == tokens
        (layer,) = g["layers"]
        restored = exact.restored[kind].reshape(len(want), -1)
        assert np.array_equal(decode(layer["values"]), restored.float().numpy().reshape(-1))
        assert np.array_equal(decode(g["tips"]["logit_diff patched"]),
                              exact.values[kind].reshape(-1).float().numpy())
        lim = max(1.0, float(restored.abs().max()))
        assert (layer["vmin"], layer["vmax"], layer["scale"]) == (-lim, lim, "diverging")
    assert f"clean {exact.clean:.4f}, corrupted {exact.corrupted:.4f}" in tabs["note"]


def test_a_mapped_grid_labels_its_positions(lm):
    r = patch(lm, "abcdef", "abXdef", "a", kinds=("resid",), position_map=[(2, 2), (5, 5)])
    g = grid_of(r.views(Vocab())[0]["tabs"][0])
    assert g["cols"] == [r.tokens[2], r.tokens[5]] and g["tips"].keys() == {"prob patched"}
    assert np.array_equal(decode(g["layers"][0]["values"]), r.restored["resid"].reshape(-1).float().numpy())


def test_knockout_bars(lm):
    r = knockout(lm, CLEAN, "a", "b", keys=[1, 2], window=2)
    assert r.tokens == [lm.tokenizer.decode([i]) for i in lm.tokenizer(CLEAN)["input_ids"]]
    assert r.to_dict()["tokens"] == r.tokens
    (bars,) = r.views(Vocab())
    assert bars["labels"] == ["blocks 0–1", "blocks 1–2"]
    assert np.array_equal(decode(bars["values"]), r.drop.float().numpy())
    for label, m, d in zip(bars["labels"], r.metric.tolist(), r.drop.tolist()):
        assert bars["details"][label]["tables"][0]["rows"] == [["without knockout", r.base], ["with the cut", m],
                                                               ["drop", d]]
    assert f"(6 {r.tokens[6]!r} → 1 {r.tokens[1]!r}, 2 {r.tokens[2]!r})" in bars["note"]


def test_attribution_estimates_and_verified_cells(atp):
    (tabs, table) = atp.views(Vocab())
    assert [t["label"] for t in tabs["tabs"]] == ["resid", "head", "neuron"]
    for tab in tabs["tabs"]:
        kind, g = tab["label"], grid_of(tab)
        est = atp.estimate[kind]
        n = est.numel() // est.shape[-1]
        assert len(g["rows"]) == n and [l["name"] for l in g["layers"]] == ["estimated change"]
        assert np.array_equal(decode(g["layers"][0]["values"]), est.reshape(-1).float().numpy())
        verified = decode(g["tips"]["exact (verified)"]).reshape(est.shape)
        v = atp.verification[kind]
        nodes = v["top"] + v["sample"]
        assert int((~np.isnan(verified)).sum()) == len(nodes) == 6
        for node in nodes:
            assert verified[tuple(node["index"])] == np.float32(node["exact"])
    assert table["rows"][2][:5] == ["neuron", 3 * 96 * 7, 3, 3, atp.verification["neuron"]["sampled_misses"]]
    assert table["rows"][0][6] == atp.verification["resid"]["miss_rate_bound"]


def test_a_large_grid_draws_its_top_rows(atp, monkeypatch):
    monkeypatch.setattr(report_attribution, "MAX_ROWS", 100)
    g = grid_of(attribution_views(atp, Vocab())[0]["tabs"][2])
    flat = atp.estimate["neuron"].reshape(3 * 96, -1)
    keep = sorted(flat.abs().amax(1).topk(64).indices.tolist())
    assert g["rows"] == [f"{i // 96}.{i % 96}" for i in keep] and g["note"].startswith("the 64 of 288 rows")
    assert np.array_equal(decode(g["layers"][0]["values"]), flat[keep].reshape(-1).float().numpy())


def test_graddrop_shows_magnitude_and_sign(lm):
    r = attribution_patch(lm, CLEAN, BAD, "a", "b", kinds=("attn",), method="atp*")
    (tabs,) = r.views(Vocab())
    g = grid_of(tabs["tabs"][0])
    assert [l["name"] for l in g["layers"]] == ["GradDrop magnitude", "signed estimate"] and g["tips"] == {}
    assert np.array_equal(decode(g["layers"][0]["values"]), r.estimate["attn"].reshape(-1).float().numpy())
    assert np.array_equal(decode(g["layers"][1]["values"]), r.signed["attn"].reshape(-1).float().numpy())


def test_the_command_page_sets_the_estimate_beside_the_exact_grid(exact, atp):
    comparison = {"atp": {"resid": {"nodes": 28, "pearson": 0.5, "spearman": None, "top": 5, "missed": [{}]}}}
    tabs, compared = patch_page_views(exact, [atp], comparison)
    assert [t["label"] for t in tabs["tabs"]] == ["exact", "atp"]
    resid = grid_of(tabs["tabs"][1]["views"][0]["tabs"][0])
    effect = (exact.values["resid"] - exact.corrupted).reshape(-1).float().numpy()
    assert resid["layers"][1]["name"] == "exact effect (patched)"
    assert np.array_equal(decode(resid["layers"][1]["values"]), effect)
    assert np.array_equal(decode(resid["tips"]["exact effect"]), effect)
    assert "exact effect" not in grid_of(tabs["tabs"][1]["views"][0]["tabs"][2])["tips"]  # no exact neurons
    assert compared["rows"] == [["atp", "resid", 28, 0.5, None, 5, 1]]


def test_patchscope_table_and_grid(lm):
    r = patchscope(lm, "abc", target="x?y", target_position=1, n_tokens=2)
    table, grid = r.views(Vocab())
    assert [row[:2] for row in table["rows"]] == [[0, 0], [1, 1], [2, 2]]
    assert [row[2]["t"] for row in table["rows"]] == [top[t] for top, t in zip(r.lens_top1, r.target_layers)]
    assert [row[3] for row in table["rows"]] == [g.replace("\n", "↵") for g in r.generations]
    assert grid["cell_text"] == [t for row in r.lens_top1 for t in row]
    same = [float(t.strip() == r.source_token.strip()) for row in r.lens_top1 for t in row]
    assert np.array_equal(decode(grid["layers"][0]["values"]), np.float32(same))


def test_the_commands_write_their_pages(model_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert cli.main(["patch", "--model", model_dir, "--clean", CLEAN, "--corrupted", BAD, "--answer", "a",
                     "--counterfactual", "b", "--kinds", "resid,head", "--method", "exact,atp", "--verify", "2",
                     "--out", str(out), "--no-progress"]) == 0
    assert f"{out}/{REPORT}" in capsys.readouterr().out
    data = page_data((out / REPORT).read_text(encoding="utf-8"))
    assert data["meta"] == {"model": model_dir, "clean": CLEAN, "corrupted": BAD, "answer": "a", "counterfactual": "b"}
    saved, est = json.loads((out / "patch.json").read_text()), json.loads((out / "attribution_atp.json").read_text())
    tabs = data["views"][0]["tabs"]
    resid = grid_of(tabs[0]["views"][0]["tabs"][0])
    assert np.array_equal(decode(resid["layers"][0]["values"]), np.float32(saved["restored"]["resid"]).reshape(-1))
    head = grid_of(tabs[1]["views"][0]["tabs"][1])
    assert np.array_equal(decode(head["layers"][0]["values"]), np.float32(est["estimate"]["head"]).reshape(-1))
    assert data["views"][-1]["title"] == "estimates against the exact grid"
    ko = tmp_path / "k"
    assert cli.main(["patch", "--model", model_dir, "--clean", CLEAN, "--answer", "a", "--knockout-keys", "1-2",
                     "--window", "2", "--out", str(ko)]) == 0
    bars = page_data((ko / REPORT).read_text(encoding="utf-8"))["views"][0]
    assert np.array_equal(decode(bars["values"]), np.float32(json.loads((ko / "knockout.json").read_text())["drop"]))
    scope = tmp_path / "s"
    assert cli.main(["patchscope", "--model", model_dir, "--source", "abc", "--target", "x?y", "--n-tokens", "2",
                     "--out", str(scope), "--no-progress"]) == 0
    assert f"{REPORT}" in capsys.readouterr().out
    table = page_data((scope / REPORT).read_text(encoding="utf-8"))["views"][0]
    generations = json.loads((scope / "patchscope.json").read_text())["generations"]
    assert [row[3] for row in table["rows"]] == [g.replace("\n", "↵") for g in generations]
