"""The concept-geometry page: the concept × concept grid holds the pair and direction cosines of both inner
products, a cell's details its concepts' pairs; the per-concept and skipped tables; `fusedlens concepts`
writes it."""
import json

import numpy as np

from fusedlens.cli import main
from fusedlens.concepts import concept_geometry
from fusedlens.report.page import REPORT, Vocab
from test_concepts_api import LISTS, _tiny_lm
from test_report_page import decode, page_data
from test_report_probe import by_title


def concepts_result():
    return concept_geometry(_tiny_lm("llama"), LISTS)


def test_grid_and_tables_are_the_geometry():
    r = concepts_result()
    views = r.views(Vocab())
    grid = by_title(views, "concept × concept")
    assert grid["cols"] == r.concepts and grid["rows"] == [f"{c} ({len(r.pairs[c])})" for c in r.concepts]
    want = [r.geometry["euclidean"].pairs, r.geometry["causal"].pairs, r.geometry["euclidean"].directions,
            r.geometry["causal"].directions]
    for layer, w in zip(grid["layers"], want):
        np.testing.assert_allclose(decode(layer["values"]), w.reshape(-1).numpy(), rtol=1e-6, atol=1e-7, equal_nan=True)
    assert np.isnan(decode(grid["layers"][0]["values"])[-1])  # "multi" has no usable pair
    case, bracket = r.concepts.index("case"), r.concepts.index("bracket")
    d = grid["details"][f"{case},{bracket}"]
    assert [t["title"] for t in d["tables"]] == ["case: 16 pairs", "bracket: 4 pairs"]
    assert d["tables"][1]["rows"] == [[{"t": x}, {"t": y}] for x, y in LISTS["bracket"]]
    assert len(grid["details"][f"{case},{case}"]["tables"]) == 1
    table = by_title(views, "per concept")
    for row, c in zip(table["rows"], r.concepts):
        i = r.concepts.index(c)
        assert row[:2] == [c, len(r.pairs[c])]
        eu, ca = r.geometry["euclidean"], r.geometry["causal"]
        want = [float(eu.within[i]), float(ca.within[i]), float(eu.alignment[i]), float(ca.alignment[i])]
        np.testing.assert_allclose(row[2:], want, equal_nan=True)
    skipped = by_title(views, "skipped pairs")
    assert [(row[0], row[1]["t"], row[2]["t"]) for row in skipped["rows"]] == \
        [(s["concept"], s["x"], s["y"]) for s in r.skipped] and len(r.skipped) == 2


def test_cli_writes_the_report(model_dir, tmp_path, capsys):
    path = tmp_path / "lists.json"
    path.write_text(json.dumps(LISTS))
    out = tmp_path / "out"
    assert main(["concepts", "--model", model_dir, "--concepts", str(path), "--out", str(out), "--no-progress"]) == 0
    assert "report.html" in capsys.readouterr().out
    data = page_data((out / REPORT).read_text())
    saved = json.loads((out / "concepts.json").read_text())
    grid = by_title(data["views"], "concept × concept")
    causal = np.array([[np.nan if v is None else v for v in row] for row in saved["geometry"]["causal"]["pairs"]])
    np.testing.assert_allclose(decode(grid["layers"][1]["values"]), causal.reshape(-1), rtol=1e-6, atol=1e-7,
                               equal_nan=True)
