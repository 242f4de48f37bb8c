"""The lens pages in headless Chromium (tests/browser.py): drawn without console errors or network, the tooltip
of a known cell holds the top tokens of the saved JSON, tokens open their curves, pages and colours switch.
The corpus job's report.html and `fusedlens view --serve` too."""
import os
import re
import subprocess
import sys
import urllib.request

import pytest
import torch

from browser import console_errors, hover, network_requests, open_page, screenshot, tooltip_text
from browser import offline as set_offline
from fusedlens import LensModel, LensResult, LogitLens
from fusedlens.job import RunConfig, run_corpus
from tiny_models import tiny_model, tiny_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A second text,\nwith two lines and more words."]


def shown(token: str) -> str:
    """A token as the page writes it (report.js shown())."""
    if token == "":
        return "∅"
    token = token.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")
    return re.sub("[\r\u00a0\u1680\u2000-\u200d\u2028\u2029\u202f\u205f\u3000\ufeff]", "⍽", token)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    folder = tmp_path_factory.mktemp("lens_page")
    result = LogitLens(lm, k=5).run(TEXTS, batch_size=2)
    result.save_json(str(folder / "lens.json"))
    return result.save_html(str(folder / "lens.html")), str(folder / "lens.json"), lm.tokenizer


def test_the_lens_page_draws_offline_without_errors(browser, saved, tmp_path):
    page, _, _ = saved
    logs = open_page(browser, page)
    assert console_errors(logs) == [] and network_requests(browser) == []
    cells = browser.find_elements("css selector", "td.fl-cell")
    assert len(cells) == 4 * 24  # 4 sites (embed, resid.0-2) × the first page of 24 tokens
    screenshot(browser, str(tmp_path / "lens.png"))


def test_a_tooltip_holds_the_jsons_top_tokens(browser, saved):
    page, json_path, tok = saved
    want = LensResult.load_json(json_path)
    open_page(browser, page)
    for site, col in ((1, 3), (3, 17), (0, 0)):
        hover(browser, browser.find_element("css selector", f'td.fl-cell[data-r="{site}"][data-c="{col}"]'))
        lines = tooltip_text(browser).split("\n")
        assert lines[0] == f"site {want.sites[site]}, token {col}: {shown(tok.decode([int(want.input_ids[col])]))}"
        top = [line.split("\t") for line in lines[lines.index("#\ttoken\tp") + 1:]]
        ids = want.stats.topk_ids[site, col].tolist()
        assert [t for _, t, _ in top] == [shown(tok.decode([i])) for i in ids]
        p = torch.exp(want.stats.topk_logits[site, col].double() - want.stats.lse[site, col].double())
        assert [float(x) for _, _, x in top] == pytest.approx(p.tolist(), abs=6e-5)  # four decimals
        cell = browser.find_element("css selector", f'td.fl-cell[data-r="{site}"][data-c="{col}"]')
        assert cell.text == shown(tok.decode([ids[0]]))[:7]


def test_a_token_opens_its_curves_and_the_grid_pages_and_recolours(browser, saved):
    page, json_path, _ = saved
    want = LensResult.load_json(json_path)
    open_page(browser, page)
    browser.find_element("css selector", 'th.fl-col[data-c="5"]').click()
    curves = browser.find_element("css selector", ".fl-curves")
    assert curves.get_attribute("data-c") == "5"
    charts = curves.find_elements("css selector", "svg.fl-lines")
    assert len(charts) == 3  # rank, probability, nats
    names = [p.get_attribute("data-name") for p in curves.find_elements("css selector", "path.fl-series")]
    assert names == ["rank of the final top-1", "p(next token)", "p(lens top-1)", "entropy (nats)",
                     "KL to the final site (nats)"]
    # the points' titles carry the values: entropy of token 5 at each site
    titles = [t.get_attribute("textContent") for t in charts[2].find_elements("css selector", "circle title")]
    ent = [float(t.rsplit(": ", 1)[1]) for t in titles if t.startswith("entropy")]
    assert ent == pytest.approx(want.stats.entropy[:, 5].tolist(), abs=1e-4)
    cell = browser.find_element("css selector", 'td.fl-cell[data-r="2"][data-c="7"]')
    before = cell.value_of_css_property("background-color")
    select = browser.find_element("css selector", "select.fl-layer")
    select.find_element("css selector", 'option[value="2"]').click()  # entropy
    cell = browser.find_element("css selector", 'td.fl-cell[data-r="2"][data-c="7"]')
    assert cell.value_of_css_property("background-color") != before
    browser.find_element("css selector", "button.fl-next").click()
    first = browser.find_element("css selector", "th.fl-col").get_attribute("data-c")
    assert first == str(min(24, want.n_tokens - 24))


def test_the_page_is_the_same_with_the_network_on(browser, saved):
    page, _, _ = saved
    open_page(browser, page)
    offline = browser.execute_script("return document.getElementById('fl-root').innerHTML")
    set_offline(browser, False)
    try:
        open_page(browser, page)
        assert browser.execute_script("return document.getElementById('fl-root').innerHTML") == offline
    finally:
        set_offline(browser, True)


def test_the_run_report_and_view_serve(browser, lm, corpus_file, tmp_path):
    out = str(tmp_path / "run")
    summary = run_corpus(RunConfig(corpus=[corpus_file], out=out, seq_len=64, max_tokens=192, dla=True,
                                   progress=False), lm=lm)
    path = os.path.join(out, "report.html")
    logs = open_page(browser, path)
    assert console_errors(logs) == [] and network_requests(browser) == []
    titles = [h.text for h in browser.find_elements("css selector", "section.fl-view > h3")]
    assert titles[0].startswith("logit lens, per site over all 192 tokens") and len(titles) == 5
    heads = browser.find_elements("css selector", 'section.fl-view-heatmap td.fl-cell')
    assert len(heads) == lm.n_layers * 4  # the tiny llama's heads
    # the layer curves are summary.json's rows
    circles = browser.find_elements("css selector", "section.fl-view-lines circle title")
    kl = [float(c.get_attribute("textContent").rsplit(": ", 1)[1]) for c in circles
          if c.get_attribute("textContent").startswith("KL")]
    assert kl == pytest.approx([r["kl_to_final"] for r in summary["layers"]], abs=1e-4)
    screenshot(browser, str(tmp_path / "run.png"))
    # fusedlens view: the path, or the page over http on 127.0.0.1 only
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    printed = subprocess.run([sys.executable, "-m", "fusedlens", "view", out], capture_output=True, text=True, env=env)
    assert printed.returncode == 0 and printed.stdout.strip() == os.path.abspath(path)
    proc = subprocess.Popen([sys.executable, "-m", "fusedlens", "view", out, "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split(" ")[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/report.html")
        assert urllib.request.urlopen(url, timeout=10).read() == open(path, "rb").read()
        logs = open_page(browser, url, served=True)
        assert console_errors(logs) == []
        assert len(browser.find_elements("css selector", "td.fl-cell")) > 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_demo_report_on_smollm2(browser, real_lm, tmp_path):
    """The real model's page: its tokenizer's strings in the tooltips, the top-1 of an independent run."""
    from fusedlens.cli.demo import run_demo
    from fusedlens.data.windows import corpus_ids

    run_demo(n_tokens=64, seq_len=32, out_dir=str(tmp_path), lm=real_lm, k=5, quiet=True)
    want = LogitLens(real_lm, k=5).run(corpus_ids(real_lm.tokenizer)[:64], seq_len=32)
    logs = open_page(browser, str(tmp_path / "report.html"))
    assert console_errors(logs) == [] and network_requests(browser) == []
    browser.find_element("css selector", "button.fl-next").click()  # tokens 24-47
    for site, col in ((30, 30), (15, 41), (0, 24)):
        hover(browser, browser.find_element("css selector", f'td.fl-cell[data-r="{site}"][data-c="{col}"]'))
        lines = tooltip_text(browser).split("\n")
        top1 = lines[lines.index("#\ttoken\tp") + 1].split("\t")[1]
        assert top1 == shown(real_lm.tokenizer.decode([int(want.stats.topk_ids[site, col, 0])]))


def test_lenses_side_by_side_page_together(browser, saved, tmp_path):
    """Two grids of the same tokens (LensComparison): one pager moves both, each cell keeps its own lens' tooltip."""
    from fusedlens.lens import LensComparison

    _, json_path, tok = saved
    r = LensResult.load_json(json_path)
    r.tokenizer = tok
    page = LensComparison({"logit lens": r, "second": r}).save_html(str(tmp_path / "both.html"))
    assert console_errors(open_page(browser, page)) == []
    grids = browser.find_elements("css selector", ".fl-lens")
    assert len(grids) == 2
    grids[0].find_element("css selector", "button.fl-next").click()
    firsts = [g.find_element("css selector", "th.fl-col").get_attribute("data-c") for g in grids]
    assert firsts == ["12", "12"]  # 24 tokens a page, shared by two grids
    hover(browser, grids[1].find_element("css selector", 'td.fl-cell[data-r="2"][data-c="13"]'))
    lines = tooltip_text(browser).split("\n")
    assert lines[lines.index("#\ttoken\tp") + 1].split("\t")[1] == shown(tok.decode([int(r.stats.topk_ids[2, 13, 0])]))
