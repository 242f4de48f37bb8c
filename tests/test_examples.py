"""The example notebooks (examples/*.ipynb): each runs from top to bottom in a fresh Jupyter kernel without
an error, and shows at least one fusedlens view (the interactive page in an iframe, `Viewable._repr_html_`);
the repository keeps them without outputs.

The kernel is "python3" as the notebooks name it, pinned here to this interpreter: a kernelspec written to
a temporary folder on JUPYTER_PATH (searched before the user's and the environment's), so a machine
with no kernel registered, or one whose "python3" is another Python, runs them the same. The kernel
inherits this process' environment, conftest's settings (HF_HUB_OFFLINE, TRITON_INTERPRET) included, and
imports the same fusedlens as these tests: this checkout's python/ (PYTHONPATH=python) or the installed
wheel (CI), whichever this process has."""
from __future__ import annotations

import json
import os
import site
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

import fusedlens

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
PACKAGE_ROOT = str(Path(fusedlens.__file__).resolve().parents[1])  # the folder this process imports it from
CELL_TIMEOUT = 600  # seconds for one cell; a whole notebook took 40-70 s on two busy cores


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"lens.ipynb", "dla.ipynb", "patching.ipynb", "steering.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    """Saved as nbformat writes them and without outputs (execution counts, outputs, widget state)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert unstripped(nb) == [], f"{path.name}: cells {unstripped(nb)} have outputs or execution counts"
    assert "widgets" not in nb.metadata


def unstripped(nb) -> list[int]:
    """The code cells with outputs or an execution count."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and (cell.outputs or cell.execution_count is not None)]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """For the notebooks' kernels: a "python3" kernelspec for this interpreter, the folder of the fusedlens
    imported here on PYTHONPATH and a throw-away IPython profile folder (the environment restored afterwards)."""
    data = tmp_path_factory.mktemp("jupyter")
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (fusedlens tests)", "language": "python"}))
    env = {"JUPYTER_PATH": os.pathsep.join(filter(None, [str(data), os.environ.get("JUPYTER_PATH")])),
           "IPYTHONDIR": str(tmp_path_factory.mktemp("ipython"))}
    if PACKAGE_ROOT not in site_dirs():  # a site directory is on the kernel's path already (and must stay
        # a site directory there: one put on PYTHONPATH would have its .pth files skipped)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def site_dirs() -> set[str]:
    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    return {str(Path(d).resolve()) for d in dirs}


def fusedlens_views(nb) -> list[str]:
    """The text/html outputs of a notebook that are fusedlens pages (the data script inside an iframe)."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            page = o.get("data", {}).get("text/html", "") if o.get("output_type") in ("display_data", "execute_result") else ""
            page = "".join(page) if isinstance(page, list) else page
            if page.lstrip().startswith("<iframe") and "fl-data" in page:
                out.append(page)
    return out


def cell_errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for cell in nb.cells for o in cell.get("outputs", [])
            if o.get("output_type") == "error"]


def execute(path: Path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, allow_errors=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


@pytest.fixture(scope="module")
def executed(kernel_env):
    """Every notebook run, two kernels at a time (most of a notebook is loading the model, one core's work)."""
    from concurrent.futures import ThreadPoolExecutor

    def run(path):
        start = time.monotonic()
        try:
            return execute(path), time.monotonic() - start
        except Exception as err:  # reported by the notebook's own test
            return err, time.monotonic() - start

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(NOTEBOOKS, pool.map(run, NOTEBOOKS)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_shows_a_view(path, executed):
    nb, seconds = executed[path]
    if isinstance(nb, Exception):
        raise nb
    assert not cell_errors(nb)
    views = fusedlens_views(nb)
    assert views, f"{path.name}: no cell displayed a fusedlens view"
    # and a cell printed its number
    streams = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
                      and o.get("name") == "stdout")
    assert any(ch.isdigit() for ch in streams), f"{path.name}: printed no number: {streams!r}"
    print(f"{path.name}: {seconds:.1f} s, {len(views)} view(s)")
    if path.name == "lens.ipynb":  # progress=True: tqdm.auto's notebook bar (ipywidgets), not the text bar
        widgets = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json"
                   in o.get("data", {})]
        assert widgets, "lens.ipynb: the progress bar is not tqdm's notebook widget"


def test_a_failing_cell_fails(tmp_path, kernel_env):
    """What the notebook test relies on: a cell's exception stops the run with CellExecutionError, and a
    notebook that displays no view is told apart from one that does."""
    bad = tmp_path / "bad.ipynb"
    ok = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import fusedlens, os\nos.path.realpath(fusedlens.__file__)")])
    ok.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(ok, tmp_path / "ok.ipynb")
    ran = execute(tmp_path / "ok.ipynb")
    assert fusedlens_views(ran) == []
    assert unstripped(ran) == [0]
    # the kernel imports the fusedlens these tests import, not another copy
    shown = [o["data"]["text/plain"] for o in ran.cells[0].outputs if o.output_type == "execute_result"]
    assert shown == [repr(os.path.realpath(fusedlens.__file__))]
    ok.cells.append(nbformat.v4.new_code_cell("raise ValueError('boom')"))
    nbformat.write(ok, bad)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="boom"):
        execute(bad)


def test_views_are_recognised():
    """fusedlens_views finds the page a Viewable shows in a notebook, and only that."""
    from fusedlens.report.page import notebook_html, page_html

    page = notebook_html(page_html("t", [{"type": "text", "title": "x", "text": "hello"}]))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/html": page, "text/plain": "<x>"},
                                                   execution_count=1)]
    assert len(fusedlens_views(nb)) == 1
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/html": "<b>fl-data</b>"}, execution_count=1)]
    assert fusedlens_views(nb) == []
