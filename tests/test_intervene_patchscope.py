"""intervene.patchscope on a tiny random model and on SmolLM2: a target patched with its own state
continues exactly as unpatched; an identity mapping changes nothing; bad input is a one-line error."""
import pytest
import torch

from fusedlens import cli
from fusedlens.core.capture import capture_residuals
from fusedlens.core.models import LensModel
from fusedlens.intervene import Edit, run_with
from fusedlens.intervene.patchscope import generate, patchscope
from tiny_models import tiny_model, tiny_tokenizer


def _greedy(lm, ids, n):
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, lm.model(input_ids=seq[None], use_cache=False).logits[0, -1].argmax().reshape(1)])
    return seq[ids.numel():]


def test_self_patch_and_identity_mapping():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    text = "abc?d"
    ids = torch.tensor(lm.tokenizer(text)["input_ids"])
    res = capture_residuals(lm, ids[None], embed=False)
    edit = Edit("resid.1", "replace", res.hidden[1, 3], positions=[3])
    assert torch.equal(generate(lm, ids, [edit], 5), _greedy(lm, ids, 5))  # its own state: nothing changes
    r = patchscope(lm, text, source_position=3, target=text, layers=[0, 1, 2], n_tokens=5)
    plain = lm.tokenizer.decode(_greedy(lm, ids, 5))
    assert r.generations == [plain] * 3 and r.meta["target_position"] == 3  # the "?" placeholder
    eye = patchscope(lm, "xyz", target=text, layers=[1], n_tokens=4, mapping=torch.eye(lm.d_model))
    assert eye.generations == patchscope(lm, "xyz", target=text, layers=[1], n_tokens=4).generations
    assert len(eye.lens_top1[0]) == lm.n_layers


def test_bad_inputs():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    with pytest.raises(ValueError, match=r"mapping: expected a \[48, 48\] matrix"):
        patchscope(lm, "abc", target="x?y", mapping=torch.eye(3))
    with pytest.raises(ValueError, match="source_position: position 9 out of range for 3 tokens"):
        patchscope(lm, "abc", source_position=9, target="x?y")
    with pytest.raises(ValueError, match=r"layers: expected source layers in \[0, 3\)"):
        patchscope(lm, "abc", target="x?y", layers=[5])
    with pytest.raises(ValueError, match="n_tokens"):
        patchscope(lm, "abc", target="x?y", n_tokens=0)


def test_token_identity_on_the_real_model(real_lm, tmp_path, monkeypatch):
    r = patchscope(real_lm, "Diana, Princess of Wales", layers=[0, 8], n_tokens=3)
    assert r.source_token == " Wales" and all(g.startswith(" Wales") for g in r.generations)
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    assert cli.main(["patchscope", "--source", "Diana, Princess of Wales", "--layers", "2", "--n-tokens", "2",
                     "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "patchscope.json").exists()


def test_generation_with_edits_at_new_positions():
    lm = LensModel.from_hf(tiny_model("qwen2"), tiny_tokenizer())
    ids = torch.tensor(lm.tokenizer("abcd")["input_ids"])
    plain = _greedy(lm, ids, 6)
    assert torch.equal(generate(lm, ids, [Edit("resid.1", "add", torch.zeros(lm.d_model))], 6, at="new"), plain)
    push = torch.randn(lm.d_model) * 20
    steered = generate(lm, ids, [Edit("resid.1", "add", push, positions=[0])], 6, at="new")
    assert steered[0] == plain[0]  # the first new token is read at the prompt's last position: no edit there yet
    assert not torch.equal(steered, plain)
    by_hand = ids.clone()  # the same edit written out: add at every generated position, rerun each step
    for _ in range(6):
        edits = [Edit("resid.1", "add", push, positions=list(range(ids.numel(), by_hand.numel())))] \
            if by_hand.numel() > ids.numel() else []
        nxt = run_with(lm, edits, by_hand[None])[0, -1].argmax().reshape(1)
        by_hand = torch.cat([by_hand, nxt])
    assert torch.equal(steered, by_hand[ids.numel():])
    with pytest.raises(ValueError, match="at: expected 'prompt' or 'new'"):
        generate(lm, ids, [], 2, at="everywhere")


def test_mapping_files(tmp_path):
    from fusedlens.cli.patchscope import load_mapping

    torch.save(torch.eye(3), tmp_path / "m.pt")
    torch.save({"weight": torch.eye(3), "bias": torch.ones(3)}, tmp_path / "a.pt")
    (tmp_path / "bad.pt").write_text("not torch")
    w, b = load_mapping(str(tmp_path / "m.pt"))
    assert torch.equal(w, torch.eye(3)) and b is None
    w, b = load_mapping(str(tmp_path / "a.pt"))
    assert torch.equal(b, torch.ones(3))
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    shifted = patchscope(lm, "xyz", target="ab?c", layers=[1], n_tokens=3,
                         mapping=(torch.eye(lm.d_model), torch.zeros(lm.d_model)))
    assert shifted.generations == patchscope(lm, "xyz", target="ab?c", layers=[1], n_tokens=3).generations
    with pytest.raises(ValueError, match="cannot be read as a torch file"):
        load_mapping(str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="not found"):
        load_mapping(str(tmp_path / "none.pt"))


def test_a_second_model_reads_the_patch():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    other = LensModel.from_hf(tiny_model("llama", seed=1), tiny_tokenizer())  # M*: same width, other weights
    r = patchscope(lm, "xyz", target="ab?c", layers=[2], n_tokens=4, target_lm=other)
    state = capture_residuals(lm, torch.tensor(lm.tokenizer("xyz")["input_ids"])[None], embed=False).hidden[2, -1]
    ids = torch.tensor(other.tokenizer("ab?c")["input_ids"])
    want = generate(other, ids, [Edit("resid.2", "replace", state, positions=[2])], 4)
    assert r.generations == [other.tokenizer.decode(want)]
