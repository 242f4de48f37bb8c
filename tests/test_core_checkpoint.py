"""core/checkpoint.py: the one checkpoint scheme (atomic, fingerprinted, clear errors)."""
import pytest
import torch

from fusedlens.core.checkpoint import StateFile


def test_save_load_round_trip_and_atomic(tmp_path):
    f = StateFile(str(tmp_path / "sub" / "state.pt"), {"seq_len": 64, "model": "m"})
    assert f.load() is None
    x = torch.randn(5)
    f.save({"x": x, "step": 3})
    back = f.load()
    assert torch.equal(back["x"], x) and back["step"] == 3
    assert not (tmp_path / "sub" / "state.pt.tmp").exists()


def test_other_fingerprint_names_the_fields(tmp_path):
    StateFile(str(tmp_path / "s.pt"), {"seq_len": 64, "model": "m"}).save({})
    with pytest.raises(ValueError, match=r"different run \(other seq_len: seq_len=64\)"):
        StateFile(str(tmp_path / "s.pt"), {"seq_len": 32, "model": "m"}).load()


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_unreadable_file_says_what_to_do(tmp_path, content):
    path = tmp_path / "s.pt"
    StateFile(str(path), {"a": 1}).save({"x": torch.randn(1000)})
    path.write_bytes(path.read_bytes()[:200] if content is None else content)
    with pytest.raises(ValueError, match=r"s.pt cannot be read .*delete it to start the run over, or restore it"):
        StateFile(str(path), {"a": 1}).load()


def test_a_crafted_checkpoint_is_refused_before_it_runs(tmp_path):
    """A checkpoint is loaded as plain data: a pickle that calls a function never runs (it used to, before
    the fingerprint was even compared)."""
    from test_core_files import crafted_torch_file

    marker = tmp_path / "marker"
    path = crafted_torch_file(tmp_path / "rank0.pt", marker)
    with pytest.raises(ValueError, match=r"rank0.pt is refused: .* could run code; delete it to start the run over"):
        StateFile(path, {"a": 1}).load()
    assert not marker.exists()
