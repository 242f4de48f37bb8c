"""The DLA page in headless Chromium: it draws offline without errors, a click on a head shows the tokens it
promotes and suppresses (those of dla.json), the bars and the per-source split answer too."""
import dataclasses
import json
import re

import pytest

from browser import console_errors, hover, network_requests, open_page, screenshot, tooltip_text
from fusedlens import cli
from fusedlens.dla import direct_logit_attribution as dla
from fusedlens.report.page import REPORT

PROMPTS = ["ab cd ef", "hello"]


def fmt(x, digits: int = 3) -> str:
    """report.js's fmt: how the page writes a number."""
    if x is None or x != x:
        return "–"
    if float(x).is_integer() and abs(x) < 1e7:
        return str(int(x))
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    return f"{x:.{digits}f}"


def shown(t: str) -> str:
    """report.js's shown: a token with its whitespace made visible."""
    return "∅" if t == "" else t.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")


def tip_value(text: str, name: str) -> float:
    """The number after `name` in a tooltip's text."""
    m = re.search(re.escape(name) + r":?\s+(\S+)", text)
    assert m, (name, text)
    return float(m.group(1))


def detail(driver, scope: str) -> dict:
    """The click details under `scope`: {table title: [[cell texts]]}."""
    return driver.execute_script("""
        const out = {};
        for (const t of document.querySelectorAll(arguments[0] + ' .fl-detail .fl-detail-table'))
          out[t.querySelector('.fl-sub').textContent] = [...t.querySelectorAll('tbody tr')].map(
            r => [...r.children].map(c => c.textContent));
        return out;""", scope)


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dla_page")
    assert cli.main(["dla", "--model", model_dir, *sum((["--prompt", p] for p in PROMPTS), []), "--answer", "a",
                     "--counterfactual", "b", "--sources", "head.2.1,head.1.0", "--k", "4", "--out", str(out)]) == 0
    return out, json.loads((out / "dla.json").read_text())


def test_a_click_on_a_head_shows_its_extreme_tokens(browser, run, lm, tmp_path):
    out, saved = run
    logs = open_page(browser, str(out / REPORT))
    assert console_errors(logs) == [] and network_requests(browser) == []
    rows = [j for j, t in enumerate(saved["targets"]["diff"]) if t >= 0]
    ext = saved["extremes"]
    for layer, head in ((2, 1), (0, 3)):
        browser.find_element("css selector", f'.fl-heatmap td.fl-cell[data-r="{layer}"][data-c="{head}"]').click()
        tables = list(detail(browser, ".fl-heatmap").values())
        c = ext["components"].index(f"head.{layer}.{head}")
        assert len(tables) == len(rows) == 2
        for got, row in zip(tables, rows):
            want = [[str(i + 1), shown(lm.tokenizer.decode([a])), fmt(av), shown(lm.tokenizer.decode([b])), fmt(bv)]
                    for i, (a, av, b, bv) in enumerate(zip(ext["top_ids"][c][row], ext["top_logits"][c][row],
                                                           ext["bottom_ids"][c][row], ext["bottom_logits"][c][row]))]
            assert got == want
    # the tooltip holds the head's mean effect over the attributed positions
    j = saved["components"].index("head.0.3")
    mean = sum(saved["contrib"]["diff"][j][r] for r in rows) / len(rows)
    hover(browser, browser.find_element("css selector", '.fl-heatmap td.fl-cell[data-r="0"][data-c="3"]'))
    tip = tooltip_text(browser)
    assert tip.startswith("layer 0, head 3")
    assert tip_value(tip, "mean direct effect on diff") == pytest.approx(mean, abs=1e-4)  # dla.json: 6 decimals
    screenshot(browser, str(tmp_path / "dla.png"))


def test_ids_on_a_page_without_tokenizer_are_the_results(browser, lm, tmp_path):
    r = dla(lm, PROMPTS, ("head",), answer="a", k=3)
    path = dataclasses.replace(r, tokenizer=None).save_html(str(tmp_path / "ids.html"))
    assert console_errors(open_page(browser, path)) == []
    browser.find_element("css selector", '.fl-heatmap td.fl-cell[data-r="1"][data-c="2"]').click()
    tables = detail(browser, ".fl-heatmap")
    saved = r.to_dict()["extremes"]
    c = saved["components"].index("head.1.2")
    assert len(tables) == r.rows_of("answer").numel() == 2
    for (title, got), row in zip(tables.items(), r.rows_of("answer").tolist()):
        assert title.startswith(f"prompt {int(r.batch_index[row])}, position {int(r.position[row])}")
        assert [g[1] for g in got] == [f"#{i}" for i in saved["top_ids"][c][row]]
        assert [g[3] for g in got] == [f"#{i}" for i in saved["bottom_ids"][c][row]]


def test_block_bars_and_the_split_by_source(browser, run, lm):
    out, saved = run
    assert console_errors(open_page(browser, str(out / REPORT))) == []
    browser.find_element("css selector", '.fl-bar-row[data-label="mlp.1"]').click()
    tables = list(detail(browser, ".fl-bars").values())
    rows = [j for j, t in enumerate(saved["targets"]["diff"]) if t >= 0]
    c, row = saved["extremes"]["components"].index("mlp.1"), rows[0]
    assert [t[1] for t in tables[0]] == [shown(lm.tokenizer.decode([i])) for i in saved["extremes"]["top_ids"][c][row]]
    # the split: a tab per prompt, a series per head; the attributed (last) position is marked
    browser.find_element("css selector", 'button.fl-tab[data-tab="prompt 1"]').click()
    tokens = browser.find_elements("css selector", ".fl-tokens .fl-token")
    ids = lm.tokenizer(PROMPTS[1])["input_ids"]
    assert [t.text for t in tokens] == [shown(lm.tokenizer.decode([i])) for i in ids]
    assert "fl-mark" in tokens[-1].get_attribute("class")
    select = browser.find_element("css selector", ".fl-series-select")
    assert [o.text for o in select.find_elements("css selector", "option")] == ["head.2.1", "head.1.0"]
    browser.execute_script("arguments[0].value = '1'; arguments[0].dispatchEvent(new Event('change'))", select)
    hover(browser, browser.find_elements("css selector", ".fl-tokens .fl-token")[0])
    value = saved["sources"]["head.1.0"]["diff"][rows[1]][0]
    assert tip_value(tooltip_text(browser), "head.1.0") == pytest.approx(value, abs=1e-4)
