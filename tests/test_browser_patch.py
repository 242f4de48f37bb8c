"""The patching pages in headless Chromium: drawn offline without errors, a hovered cell shows the numbers of
the command's JSON (restored fraction and patched metric; estimate and verified exact effect), tabs switch,
the knockout bars and the patchscope grid answer."""
import json

import numpy as np
import pytest

from browser import console_errors, hover, network_requests, open_page, screenshot, tooltip_text
from fusedlens import cli
from fusedlens.report.page import REPORT
from test_browser_dla import detail, fmt, tip_value

CLEAN, BAD = "abcdefg", "abXdefg"


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch_page")
    assert cli.main(["patch", "--model", model_dir, "--clean", CLEAN, "--corrupted", BAD, "--answer", "a",
                     "--counterfactual", "b", "--kinds", "resid,attn,head", "--method", "exact,atp", "--verify", "3",
                     "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "patch.json").read_text()), json.loads((out / "attribution_atp.json").read_text())


def cell(driver, r, c):
    return driver.find_element("css selector", f'.fl-pane .fl-pane td.fl-cell[data-r="{r}"][data-c="{c}"]')


def test_hover_shows_the_restored_fraction_and_the_metric(browser, run, tmp_path):
    out, saved, _ = run
    logs = open_page(browser, str(out / REPORT))
    assert console_errors(logs) == [] and network_requests(browser) == []
    for r, c in ((2, 2), (3, 6), (0, 2)):  # resid.1 at the corrupted token, the final residual, the embedding
        hover(browser, cell(browser, r, c))
        tip = tooltip_text(browser)
        restored, value = saved["restored"]["resid"][r][c], saved["values"]["resid"][r][c]
        assert tip_value(tip, "restored fraction") == float(fmt(float(np.float32(restored)), 4))
        assert tip_value(tip, "logit_diff patched") == float(fmt(float(np.float32(value)), 4))
    assert tip.startswith(f"layer embed, position 2: {saved['tokens'][2]}")
    # cells read to two decimals: the final residual restores all, a position before the corruption nothing
    assert saved["restored"]["resid"][3][6] == pytest.approx(1.0, abs=1e-4) and cell(browser, 3, 6).text == "1.00"
    assert abs(saved["restored"]["resid"][1][0]) < 1e-3 and cell(browser, 1, 0).text == "0.00"
    screenshot(browser, str(tmp_path / "patch.png"))


def test_tabs_switch_kinds_and_methods(browser, run):
    out, saved, atp = run
    assert console_errors(open_page(browser, str(out / REPORT))) == []
    assert [b.text for b in browser.find_elements("css selector", "button.fl-tab")] == \
        ["exact", "atp", "resid", "attn", "head"]
    browser.find_element("css selector", 'button.fl-tab[data-tab="head"]').click()
    assert "fl-active" in browser.find_element("css selector", 'button.fl-tab[data-tab="head"]').get_attribute("class")
    rows = browser.find_elements("css selector", ".fl-pane .fl-pane th.fl-row")
    assert [r.text for r in rows] == [f"{i}.{h}" for i in range(3) for h in range(4)]
    hover(browser, cell(browser, 6, 3))  # head.1.2 at position 3
    assert tip_value(tooltip_text(browser), "restored fraction") == float(
        fmt(float(np.float32(saved["restored"]["head"][1][2][3])), 4))
    # the estimate's tab: a verified node's tooltip holds its exact effect
    browser.find_element("css selector", 'button.fl-tab[data-tab="atp"]').click()
    assert [b.text for b in browser.find_elements("css selector", "button.fl-tab")] == \
        ["exact", "atp", "resid", "attn", "head"]
    browser.find_element("css selector", 'button.fl-tab[data-tab="attn"]').click()
    node = atp["verification"]["attn"]["top"][0]
    layer, pos = node["index"]
    hover(browser, cell(browser, layer, pos))
    tip = tooltip_text(browser)
    assert tip_value(tip, "estimated change") == float(fmt(float(np.float32(atp["estimate"]["attn"][layer][pos])), 4))
    assert tip_value(tip, "exact (verified)") == float(fmt(float(np.float32(node["exact"])), 4))
    effect = saved["values"]["attn"][layer][pos] - saved["corrupted"]
    assert tip_value(tip, "exact effect") == pytest.approx(effect, abs=2e-4)
    assert node["exact"] == pytest.approx(effect, abs=1e-4)  # verification agrees with the exact grid


def test_knockout_and_patchscope_pages(browser, model_dir, tmp_path):
    ko = tmp_path / "k"
    assert cli.main(["patch", "--model", model_dir, "--clean", CLEAN, "--answer", "a", "--counterfactual", "b",
                     "--knockout-keys", "1-2", "--window", "2", "--out", str(ko)]) == 0
    saved = json.loads((ko / "knockout.json").read_text())
    assert console_errors(open_page(browser, str(ko / REPORT))) == [] and network_requests(browser) == []
    browser.find_element("css selector", '.fl-bar-row[data-label="blocks 1–2"]').click()
    (rows,) = detail(browser, ".fl-bars").values()
    assert rows == [["without knockout", fmt(saved["base"])], ["with the cut", fmt(saved["values"][1])],
                    ["drop", fmt(saved["drop"][1])]]
    scope = tmp_path / "s"
    assert cli.main(["patchscope", "--model", model_dir, "--source", "abc", "--target", "x?y", "--n-tokens", "2",
                     "--out", str(scope), "--no-progress"]) == 0
    saved = json.loads((scope / "patchscope.json").read_text())
    assert console_errors(open_page(browser, str(scope / REPORT))) == []
    hover(browser, browser.find_element("css selector", 'td.fl-cell[data-r="1"][data-c="2"]'))
    assert tooltip_text(browser).startswith("source layer 1, target layer 2")
    screenshot(browser, str(tmp_path / "patchscope.png"))
