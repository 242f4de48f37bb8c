"""The DLA page: the head grid, the block bars, the extreme tokens a click shows and the per-source split
are the DLAResult's own numbers."""
import json

import numpy as np
import pytest

from fusedlens import cli
from fusedlens.dla import direct_logit_attribution as dla
from fusedlens.report.dla import SHOWN_PROMPTS, dla_views, shown_rows
from fusedlens.report.page import REPORT, Vocab
from test_report_page import decode, page_data

PROMPTS = ["ab cd ef", "xyz", "hello"]
SOURCES = ["head.2.1", "head.0.3"]


@pytest.fixture(scope="module")
def result(lm):
    return dla(lm, PROMPTS, ("head",), answer="a", counterfactual="b", k=3, sources=SOURCES)


def by_type(views, kind):
    return [v for v in views if v["type"] == kind]


def test_the_result_knows_its_tokenizer_but_does_not_save_it(result, lm):
    assert result.tokenizer is lm.tokenizer
    assert "tokenizer" not in result.to_dict() and "tokenizer" not in repr(result)


def test_heads_and_their_extreme_tokens(result):
    vocab = Vocab()  # no tokenizer: tokens show as #id, so the ids themselves are checked
    views = result.views(vocab)  # the default kind: the logit difference
    heads = by_type(views, "heatmap")[0]
    m = result.head_matrix("diff")
    assert heads["rows"] == ["0", "1", "2"] and heads["cols"] == ["0", "1", "2", "3"]
    assert np.array_equal(decode(heads["layers"][0]["values"]).reshape(m.shape), m.float().numpy())
    rows = shown_rows(result, "diff")
    assert rows == result.rows_of("diff").tolist() == [7, 10, 15]  # each prompt's last position
    e = result.extremes
    assert len(heads["details"]) == 12
    for layer, head in ((0, 0), (2, 1), (1, 3)):
        d = heads["details"][f"{layer},{head}"]
        c, j = result.extreme_components.index(f"head.{layer}.{head}"), result.index(f"head.{layer}.{head}")
        assert d["title"].startswith(f"head.{layer}.{head}: mean direct effect on diff {float(m[layer, head]):+.4f}")
        assert len(d["tables"]) == len(rows)
        for table, row in zip(d["tables"], rows):
            assert f"effect on diff {float(result.contrib['diff'][j, row]):+.4f}" in table["title"]
            assert [r[1]["t"] for r in table["rows"]] == [f"#{i}" for i in e.top_ids[c, row].tolist()]
            assert [r[3]["t"] for r in table["rows"]] == [f"#{i}" for i in e.bottom_ids[c, row].tolist()]
            assert [r[2] for r in table["rows"]] == e.top_logits[c, row].tolist()
            assert [r[4] for r in table["rows"]] == e.bottom_logits[c, row].tolist()


def test_blocks_sum_to_the_logit_and_click_to_their_extremes(result, lm):
    vocab = Vocab(lm.tokenizer)
    bars = by_type(result.views(vocab), "bars")[0]
    assert bars["labels"] == ["embed", "attn.0", "mlp.0", "attn.1", "mlp.1", "attn.2", "mlp.2", "bias"]
    values = decode(bars["values"])
    mean = result.mean("diff")
    assert np.array_equal(values, mean[[result.index(n) for n in bars["labels"]]].float().numpy())
    rows = result.rows_of("diff")
    assert values.astype(np.float64).sum() == pytest.approx(float(result.logits["diff"][rows].double().mean()), abs=1e-4)
    assert set(bars["details"]) == set(bars["labels"]) - {"bias"}  # the bias has no extreme tokens
    c = result.extreme_components.index("mlp.1")
    promoted = [r[1]["t"] for r in bars["details"]["mlp.1"]["tables"][0]["rows"]]
    assert promoted == [lm.tokenizer.decode([i]) for i in result.extremes.top_ids[c, 7].tolist()]


def test_the_split_by_source_over_each_prompts_tokens(result, lm):
    vocab = Vocab(lm.tokenizer)
    split = by_type(result.views(vocab), "tabs")[0]
    assert [t["label"] for t in split["tabs"]] == ["prompt 0", "prompt 1", "prompt 2"]
    for tab, row, prompt in zip(split["tabs"], shown_rows(result, "diff"), PROMPTS):
        (view,) = tab["views"]
        ids = lm.tokenizer(prompt)["input_ids"]
        assert view["tokens"] == [lm.tokenizer.decode([i]) for i in ids]
        assert [s["name"] for s in view["series"]] == SOURCES
        for s in view["series"]:
            assert s["mark"] == len(ids) - 1 == int(result.position[row])
            assert np.array_equal(decode(s["values"]), result.sources[s["name"]]["diff"][row, :len(ids)].float().numpy())
    # the split sums to the head's effect there
    assert float(result.sources["head.2.1"]["diff"][7].sum()) == pytest.approx(
        float(result.contrib["diff"][result.index("head.2.1"), 7]), abs=1e-5)


def test_other_kinds_and_what_is_left_out(lm):
    r = dla(lm, ["ab cd ef"] * (SHOWN_PROMPTS + 1), ("attn", "mlp"), answer="a", k=0)
    views = dla_views(r, Vocab())
    # no heads captured: no head grid; k=0: no extreme tokens; no sources: no split
    assert [v["type"] for v in views] == ["bars", "table"] and by_type(views, "bars")[0]["details"] == {}
    assert "answer" in views[0]["title"] and len(shown_rows(r, "answer")) == SHOWN_PROMPTS
    top1 = dla_views(r, Vocab(), "top1")
    assert np.array_equal(decode(top1[0]["values"]), r.mean("top1")[[r.index("embed")] + [
        r.index(f"{p}.{i}") for i in range(3) for p in ("attn", "mlp")] + [r.index("bias")]].float().numpy())
    assert top1[1]["rows"] == [[c, v] for c, v in r.top("top1", 15)]
    assert shown_rows(r, "top1") == [8 * p + 7 for p in range(SHOWN_PROMPTS)]  # each prompt's last position
    with pytest.raises(ValueError, match="kind: expected one of"):
        dla_views(r, Vocab(), "diff")


def test_the_command_writes_the_page(model_dir, tmp_path, capsys):
    out = tmp_path / "dla"
    assert cli.main(["dla", "--model", model_dir, "--prompt", "ab cd ef", "--prompt", "xyz", "--answer", "a",
                     "--counterfactual", "b", "--sources", "head.2.1", "--k", "4", "--out", str(out)]) == 0
    assert f"{out}/{REPORT}" in capsys.readouterr().out
    data = page_data((out / REPORT).read_text(encoding="utf-8"))
    saved = json.loads((out / "dla.json").read_text())
    assert data["meta"] == {"model": model_dir, "prompts": 2, "kind": "diff"}
    heads = by_type(data["views"], "heatmap")[0]
    contrib = np.array([[np.nan if x is None else x for x in saved["contrib"]["diff"][saved["components"].index(
        f"head.{i}.{h}")]] for i in range(3) for h in range(4)])
    rows = [j for j, t in enumerate(saved["targets"]["diff"]) if t >= 0]
    assert np.allclose(decode(heads["layers"][0]["values"]), contrib[:, rows].mean(1), atol=1e-5)
    c = saved["extremes"]["components"].index("head.2.1")
    table = heads["details"]["2,1"]["tables"][1]  # the second prompt's last position
    assert [r[2] for r in table["rows"]] == saved["extremes"]["top_logits"][c][rows[1]]
    assert [r[4] for r in table["rows"]] == saved["extremes"]["bottom_logits"][c][rows[1]]
    assert data["views"][-1]["type"] == "tabs"  # the split, one tab per prompt
