"""core/files.py: every reader of untrusted files gives one line naming the argument and the file, and no
file can run code (a pickle that would call a function is refused before it runs)."""
import os

import pytest
import torch

from fusedlens.core.files import check_file, load_torch, read_json, read_jsonl, read_text


class WritesAFile:
    """A pickle payload: unpickling it calls open(marker, "w"), i.e. runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_torch_file(path, marker):
    torch.save({"step": 3, "payload": WritesAFile(marker)}, path)
    assert not os.path.exists(marker)
    return str(path)


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = crafted_torch_file(tmp_path / "state.pt", marker)
    with pytest.raises(ValueError, match=r"^vector_file: .*state.pt is refused: it holds more than tensors") as err:
        load_torch("vector_file", path)
    assert "\n" not in str(err.value) and not marker.exists()
    torch.save({"w": torch.randn(3), "n": 4, "names": ["a"], "nested": {"x": (1.5, None, True)}}, tmp_path / "ok.pt")
    back = load_torch("vector_file", str(tmp_path / "ok.pt"))
    assert back["n"] == 4 and back["nested"]["x"] == (1.5, None, True)


@pytest.mark.parametrize("content, message", [
    (b"", "cannot be read as a torch file"), (b"not a torch file", "cannot be read as a torch file"),
    (None, "cannot be read as a torch file")])
def test_unreadable_torch_files(tmp_path, content, message):
    path = tmp_path / "t.pt"
    torch.save({"x": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:300] if content is None else content)
    with pytest.raises(ValueError, match=f"^mapping: .*t.pt {message}"):
        load_torch("mapping", str(path))


def test_missing_files_folders_encodings_and_json(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (tmp_path / "bad.json").write_text('{"a": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "nan.json").write_text('{"a": NaN}')
    (tmp_path / "lines.jsonl").write_text('{"prompt": "a", "answer": "b"}\n\n[1]\n')
    cases = [
        (lambda: check_file("prompts", str(tmp_path / "none")), r"^prompts: .*none not found$"),
        (lambda: check_file("prompts", str(tmp_path)), r"^prompts: .* is a folder; give a file$"),
        (lambda: read_text("text", str(tmp_path / "latin1.txt")), r"^text: .*latin1.txt is not UTF-8 text"),
        (lambda: read_json("counts", str(tmp_path / "bad.json")), r"^counts: .*bad.json is not valid JSON"),
        (lambda: read_json("counts", str(tmp_path / "list.json")), r"^counts: .*list.json holds a list, expected"),
        (lambda: read_json("counts", str(tmp_path / "nan.json")), r"^counts: .*nan.json is not valid JSON \(NaN\)"),
        (lambda: read_jsonl("answers", str(tmp_path / "lines.jsonl"), ("prompt", "answer")),
         r"^answers: .*lines.jsonl line 3: expected an object with prompt, answer, got a list"),
        (lambda: read_jsonl("answers", str(tmp_path / "latin1.txt")), r"^answers: .* is not UTF-8"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value), message


def test_read_jsonl_keeps_where(tmp_path):
    (tmp_path / "ok.jsonl").write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c", "answer": "d"}\n')
    items = read_jsonl("answers", str(tmp_path / "ok.jsonl"), ("prompt", "answer"))
    assert [it["prompt"] for it in items] == ["a", "c"] and items[1]["_where"].endswith("ok.jsonl line 3")
