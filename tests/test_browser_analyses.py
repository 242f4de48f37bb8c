"""The pages of probe, refine, directions, steer, concepts and the tuned-lens evaluation in headless Chromium
(tests/browser.py): each draws without console errors or network requests and is no blank screenshot, and
its one interaction (a tab, a colour or site select, a cell's details) shows the result's numbers."""
import pytest
from selenium.webdriver.support.ui import Select

from browser import console_errors, hover, network_requests, open_page, screenshot, tooltip_text
from fusedlens.report.page import Vocab, write_page
from test_report_concepts import concepts_result
from test_report_directions import directions_result
from test_report_probe import probe_result
from test_report_refine import refine_result
from test_report_steer import generation, scan_result
from test_report_tuned import tuned_eval

pytestmark = pytest.mark.filterwarnings("ignore:directions. the pooled covariance is singular")


def steer_page(path):
    """What `fusedlens steer` writes when it ran both: the generation's views, then the scan's, on one page."""
    vocab = Vocab()
    return write_page(path, "steer", generation().views(vocab) + scan_result().views(vocab), vocab)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analysis_pages")
    results = {"probe": probe_result(), "refine": refine_result(), "directions": directions_result(),
               "concepts": concepts_result(), "tuned": tuned_eval()}
    paths = {name: r.save_html(str(folder / f"{name}.html")) for name, r in results.items()}
    paths["steer"] = steer_page(str(folder / "steer.html"))
    return paths, results


@pytest.mark.parametrize("name", ["probe", "refine", "directions", "steer", "concepts", "tuned"])
def test_each_page_draws_offline_without_errors(browser, pages, name, tmp_path):
    logs = open_page(browser, pages[0][name])
    assert console_errors(logs) == [] and network_requests(browser) == []
    assert browser.find_elements("css selector", "section.fl-view")
    screenshot(browser, str(tmp_path / f"{name}.png"))


def visible_rows(browser):
    return [[td.text for td in tr.find_elements("css selector", "td")]
            for tr in browser.find_elements("css selector", ".fl-tabbody .fl-table tbody tr")]


def test_probe_tabs_switch_targets(browser, pages):
    result = pages[1]["probe"]
    open_page(browser, pages[0]["probe"])
    assert visible_rows(browser)[0][1] == str(result.fits[0][0]["n_train"])
    browser.find_element("css selector", 'button.fl-tab[data-tab="num@lag-1"]').click()
    rows = visible_rows(browser)
    assert [r[0] for r in rows] == result.sites
    j = result.targets.index("num@lag-1")
    assert [r[1] for r in rows] == [str(f[j]["n_train"]) for f in result.fits]  # the file's target has nulls
    assert rows[-1][5] == f"{result.fits[-1][j]['r2_train']:.3f}"


def test_refine_colour_switches_to_mass(browser, pages):
    result = pages[1]["refine"]
    open_page(browser, pages[0]["refine"])
    cell = browser.find_element("css selector", 'td.fl-cell[data-r="1"][data-c="0"]')
    assert float(cell.text) == pytest.approx(result.lenses["logit"]["top1_share"][1][0], abs=0.006)
    Select(browser.find_element("css selector", "select.fl-layer")).select_by_index(1)
    assert browser.find_element("css selector", ".fl-legend").text.startswith("mean probability mass on the bucket")
    cell = browser.find_element("css selector", 'td.fl-cell[data-r="1"][data-c="0"]')
    assert float(cell.text) == pytest.approx(result.lenses["logit"]["mass"][1][0], abs=0.006)


def test_directions_scan_starts_at_the_best_site_and_switches(browser, pages):
    result = pages[1]["directions"]
    open_page(browser, pages[0]["directions"])
    select = Select(browser.find_element("css selector", "select.fl-series-select"))
    acc = [h["lda"]["accuracy"] for h in result.heldout]
    assert select.first_selected_option.text == result.sites[acc.index(max(acc))]
    colours = lambda: [s.value_of_css_property("background-color")  # noqa: E731
                       for s in browser.find_elements("css selector", ".fl-tokens .fl-token")]
    before = colours()
    assert len(before) == len("a good and a bad text")
    select.select_by_visible_text("embed" if select.first_selected_option.text != "embed" else "resid.2")
    assert colours() != before


def test_steer_cell_shows_its_samples(browser, pages):
    open_page(browser, pages[0]["steer"])
    browser.find_element("css selector", 'td.fl-cell[data-r="1"][data-c="2"]').click()  # the first grid's
    detail = browser.find_element("css selector", ".fl-detail")
    assert detail.find_element("css selector", "h4").text.startswith("resid.1, coefficient +4")
    rows = detail.find_elements("css selector", "tbody tr")
    assert [r.find_elements("css selector", "td")[0].text for r in rows] == ["once upon", "abc"]
    assert len(browser.find_elements("css selector", ".fl-samples")) == 2  # the generation and one site's tab


def test_concepts_tooltip_and_pairs(browser, pages):
    result = pages[1]["concepts"]
    open_page(browser, pages[0]["concepts"])
    case = result.concepts.index("case")
    cell = browser.find_element("css selector", f'td.fl-cell[data-r="{case}"][data-c="{case}"]')
    hover(browser, cell)
    assert "mean pair cosine, Euclidean" in tooltip_text(browser)
    assert float(cell.text) == pytest.approx(float(result.geometry["euclidean"].within[case]), abs=0.006)
    cell.click()
    pairs = browser.find_elements("css selector", ".fl-detail tbody tr")
    assert [r.text.split() for r in pairs] == [[q["x"], q["y"]] for q in result.pairs["case"]]
