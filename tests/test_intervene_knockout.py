"""Attention knockout (intervene: Edit op "knockout", patching.knockout).

No edges changes nothing bit for bit. Cutting every edge from the last position to the earlier ones
in every block leaves the last token attending to itself alone, so on rotary models (no absolute
position embedding) its logits equal the model run on that token by itself — an independent float64
check. Windows are batch rows: batched equals one window at a time.
"""
import pytest
import torch

from fusedlens.core.models import LensModel
from fusedlens.intervene import Edit, knockout, run_with
from tiny_models import ARCHS, random_batch, tiny_model, tiny_tokenizer

ROTARY = [a for a in ARCHS if a not in ("gpt2", "opt")]  # GPT-2 and OPT add absolute position embeddings


@pytest.mark.parametrize("arch", ARCHS)
def test_no_edges_changes_nothing(arch):
    lm = LensModel.from_hf(tiny_model(arch))
    ids = random_batch(2, 6)
    with torch.no_grad():
        base = lm.model(input_ids=ids, use_cache=False).logits
    edits = [Edit(f"attn.{i}", "knockout", [], positions=[5]) for i in range(lm.n_layers)]
    assert torch.equal(run_with(lm, edits, ids), base)
    cut = run_with(lm, [Edit("attn.1", "knockout", [2, 3], positions=[5])], ids)  # inside every window
    assert torch.equal(cut[:, :5], base[:, :5]) and not torch.equal(cut[:, 5], base[:, 5])


def test_sliding_window_layers_ignore_edges_they_do_not_have():
    """Gemma 3 (the tiny model: window 4 in blocks 0 and 1, block 2 global): cutting 5 → 0 and 5 → 1 changes
    nothing bit for bit in a sliding block, which never had those edges, and changes the global block."""
    lm = LensModel.from_hf(tiny_model("gemma3"))
    ids = random_batch(2, 6)
    with torch.no_grad():
        base = lm.model(input_ids=ids, use_cache=False).logits
    for i in (0, 1):
        assert torch.equal(run_with(lm, [Edit(f"attn.{i}", "knockout", [0, 1], positions=[5])], ids), base), i
    cut = run_with(lm, [Edit("attn.2", "knockout", [0, 1], positions=[5])], ids)
    assert torch.equal(cut[:, :5], base[:, :5]) and not torch.equal(cut[:, 5], base[:, 5])


@pytest.mark.parametrize("arch", ROTARY)
def test_cutting_every_edge_isolates_the_token(arch):
    model = tiny_model(arch)
    lm = LensModel.from_hf(model if arch == "gemma2" else model.double())
    ids = random_batch(1, 6)
    edits = [Edit(f"attn.{i}", "knockout", list(range(5)), positions=[5]) for i in range(lm.n_layers)]
    got = run_with(lm, edits, ids)[0, 5]
    with torch.no_grad():
        alone = lm.model(input_ids=ids[:, 5:], use_cache=False).logits[0, 0]
    assert torch.allclose(got, alone, atol=1e-5 if arch == "gemma2" else 1e-10), arch


def test_knockout_windows_and_bad_input():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    r = knockout(lm, "abcdef", "a", "b", keys=[1, 2], window=2, batch_size=1)
    together = knockout(lm, "abcdef", "a", "b", keys=[1, 2], window=2)
    assert r.windows == [(0, 1), (1, 2)] and torch.allclose(r.metric, together.metric, atol=1e-6)
    assert torch.allclose(r.drop, r.base - r.metric) and r.queries == [5]
    with pytest.raises(ValueError, match=r"keys: positions \[9\] out of range for 6 tokens"):
        knockout(lm, "abcdef", "a", keys=[9])
    with pytest.raises(ValueError, match="window: expected an int in"):
        knockout(lm, "abcdef", "a", keys=[1], window=4)
    with pytest.raises(ValueError, match="knockout edits attention edges"):
        run_with(lm, [Edit("mlp.1", "knockout", [0])], random_batch(1, 4))


def test_knockout_on_the_real_model(real_lm, tmp_path, monkeypatch):
    """SmolLM2 runs SDPA: the knockout switches it to eager attention and back."""
    from fusedlens import cli

    before = real_lm.model.config._attn_implementation
    prompt = "The Eiffel Tower is in the city of"
    r = knockout(real_lm, prompt, " Paris", " Rome", keys=[1, 2, 3], window=9)
    assert real_lm.model.config._attn_implementation == before and len(r.windows) == 22
    assert float(r.drop[-7:].min()) > 1.0  # the subject's edges into the last position matter late
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    assert cli.main(["patch", "--clean", prompt, "--answer", " Paris", "--counterfactual", " Rome", "--knockout-keys",
                     "1-3", "--window", "15", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "knockout.png").stat().st_size > 5_000
    assert cli.main(["patch", "--clean", prompt, "--answer", " Paris", "--knockout-keys", "1-x",
                     "--out", str(tmp_path / "b")]) == 2


def test_a_cut_that_changes_nothing_drops_exactly_zero(monkeypatch):
    """The baseline runs on the windows' attention path (eager, in their batch): a model on SDPA whose cut
    edges are already masked (keys after the query, allowed here past the command line's check) reports
    a drop of exactly 0 in every window, not SDPA's rounding against eager's."""
    from fusedlens.intervene import patching

    model = tiny_model("llama")
    model.set_attn_implementation("sdpa")
    lm = LensModel.from_hf(model, tiny_tokenizer())
    monkeypatch.setattr(patching, "check_causal_edges", lambda keys, queries: None)
    for batch_size in (1, 2, 32):
        r = knockout(lm, "abcdef", "a", "b", keys=[5], queries=[2], window=1, batch_size=batch_size)
        assert len(r.windows) == lm.n_layers and torch.equal(r.drop, torch.zeros_like(r.drop)), batch_size
    assert model.config._attn_implementation == "sdpa"


def test_knockout_edges_a_causal_model_never_has_are_errors():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    with pytest.raises(ValueError, match=r"knockout_keys: positions \[4, 5\] come after every query position \[3\]"):
        knockout(lm, "abcdef", "a", keys=[1, 4, 5], queries=[3])
    with pytest.raises(ValueError, match=r"knockout_keys: cut every key of query position 1"):
        knockout(lm, "abcdef", "a", keys=[0, 1], queries=[1, 5])
    with pytest.raises(ValueError, match="counterfactual: the same token as the answer"):
        knockout(lm, "abcdef", "a", "a", keys=[1])
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        knockout(lm, "abcdef", "a", keys=[1], batch_size=0)
