"""core.model_files: named models found in packages without importing them, a split GGUF joined once and
checked against its pinned SHA-256, the float32 conversion stamped with it, and clear errors.

Fake part packages in a temporary folder stand in for the real ones (whose file is 253 MB); the real
Gemma 3 270M is tested in test_models_gemma3.py."""
import hashlib
import json
import os
import sys

import pytest

from fusedlens.core import model_files
from fusedlens.core.checks import AdapterError
from fusedlens.core.model_files import MODELS, NamedModel


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Two part packages whose data files join into a random 'GGUF', and a named model pinned to it."""
    data = os.urandom(3000)
    halves = (data[:1234], data[1234:])
    for i, half in enumerate(halves):
        pkg = tmp_path / "site" / f"fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a part package must not be imported')\n")
        (pkg / "data" / f"m.gguf.part{i}").write_bytes(half)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("FUSEDLENS_CACHE", str(tmp_path / "cache"))
    spec = NamedModel("Fake", ("fake==1", "fake-part0==1", "fake-part1==1"), "m.gguf",
                      tuple((f"fake_part{i}", f"data/m.gguf.part{i}") for i in range(2)),
                      hashlib.sha256(data).hexdigest(), "none")
    monkeypatch.setitem(MODELS, "fake-1m", spec)
    return data, tmp_path


def test_a_split_file_is_joined_once_and_checked(fake):
    data, tmp = fake
    folder, name = model_files.gguf_file("fake-1m")
    path = os.path.join(folder, name)
    assert folder == str(tmp / "cache" / "fake-1m") and open(path, "rb").read() == data
    assert "fake_part0" not in sys.modules  # found, never imported
    stamp = os.stat(path).st_mtime_ns
    assert model_files.gguf_file("fake-1m") == (folder, name) and os.stat(path).st_mtime_ns == stamp  # not redone
    with open(path, "r+b") as f:  # a damaged cached file is joined again
        f.write(b"\0" * 10)
    model_files.gguf_file("fake-1m")
    assert open(path, "rb").read() == data


def test_parts_that_do_not_match_the_checksum_are_refused(fake, monkeypatch):
    data, tmp = fake
    monkeypatch.setitem(MODELS, "fake-1m", MODELS["fake-1m"].__class__(
        **{**MODELS["fake-1m"].__dict__, "sha256": "0" * 64}))
    with pytest.raises(AdapterError, match="SHA-256 .* not 0{64}; reinstall"):
        model_files.gguf_file("fake-1m")
    assert not [f for f in os.listdir(tmp / "cache" / "fake-1m")]  # no half-written file left behind


def test_a_missing_package_names_what_to_install(fake, monkeypatch):
    monkeypatch.setitem(MODELS, "fake-1m", MODELS["fake-1m"].__class__(
        **{**MODELS["fake-1m"].__dict__, "chunks": (("no_such_part_pkg", "data/x"),) * 2}))
    with pytest.raises(AdapterError, match=r"needs the package\(s\) fake==1 fake-part0==1 fake-part1==1: pip install"):
        model_files.gguf_file("fake-1m")


def test_the_converted_folder_counts_only_when_stamped(fake):
    _, tmp = fake
    assert model_files.read_converted("fake-1m") is None
    folder = model_files.converted_folder("fake-1m")
    os.makedirs(folder)
    (tmp / "cache" / "fake-1m" / "float32" / "model.safetensors").write_bytes(b"x")
    assert model_files.read_converted("fake-1m") is None  # no stamp
    with open(os.path.join(folder, "fusedlens-source.json"), "w") as f:
        json.dump({"sha256": "1" * 64}, f)
    assert model_files.read_converted("fake-1m") is None  # stamped for another file
    with open(os.path.join(folder, "fusedlens-source.json"), "w") as f:
        json.dump({"sha256": MODELS["fake-1m"].sha256}, f)
    assert model_files.read_converted("fake-1m") == folder


def test_named_models_and_their_errors():
    from fusedlens import load_model

    assert model_files.DEFAULT_MODEL in MODELS and "gemma-3-270m" in MODELS
    for spec in MODELS.values():
        assert all("==" in p for p in spec.packages)  # pinned
    with pytest.raises(ValueError, match="gguf_file: gemma-3-270m is a named model"):
        load_model("gemma-3-270m", gguf_file="x.gguf")
