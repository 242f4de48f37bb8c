"""intervene.patching: the causal-tracing grid on tiny random models and on SmolLM2.

A grid cell equals the same patch run alone (batched rows against one forward per patch); the
final residual at the last position restores the clean metric; cells before the first corrupted
token restore nothing; a mapped patch equals the same-length one; bad input is a one-line error.
"""
import json

import pytest
import torch

from fusedlens import cli
from fusedlens.core.models import LensModel
from fusedlens.intervene import Edit, run_with
from fusedlens.intervene.patching import clean_states, metric_of, patch
from tiny_models import ARCHS, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("arch", ARCHS)
def test_grid_cells_equal_single_patches(arch):
    lm = LensModel.from_hf(tiny_model(arch), tiny_tokenizer())
    clean, bad = "abcdefg", "abXdefg"
    kinds = ("resid", "attn", "mlp", "head")
    r = patch(lm, clean, bad, "a", "b", kinds=kinds, batch_size=7, reuse=False)
    ids = torch.tensor(lm.tokenizer(bad)["input_ids"])[None]
    states = clean_states(lm, torch.tensor(lm.tokenizer(clean)["input_ids"]), kinds)
    a, b = (lm.tokenizer.convert_tokens_to_ids(t) for t in "ab")
    for kind, site, index, pos in (("resid", "resid.1", (2, 4), 4), ("attn", "attn.2", (2, 3), 3),
                                   ("mlp", "mlp.0", (0, 2), 2), ("head", "head.1.3", (1, 3, 5), 5)):
        alone = run_with(lm, [Edit(site, "replace", states[site][pos], positions=[pos])], ids)[:, -1]
        assert float(r.values[kind][index]) == pytest.approx(float(metric_of(alone, "logit_diff", a, b)[0]), abs=1e-5)
    last = lm.n_layers  # resid row 0 is the embedding
    assert r.restored["resid"][last, -1] == pytest.approx(1.0, abs=1e-4)
    assert r.restored["resid"][:, :2].abs().max() < 1e-4  # before the corruption the states are the same
    assert r.meta["forwards"] == -(-r.meta["cells"] // 7) + 2


def test_position_map_and_prob_metric():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    same = patch(lm, "abcdef", "abXdef", "a", kinds=("resid",), batch_size=64)
    assert same.metric == "prob" and 0 < same.clean < 1
    mapped = patch(lm, "abcdef", "abXdef", "a", kinds=("resid",), position_map=[(2, 2), (5, 5)])
    assert mapped.positions == [2, 5]
    assert torch.allclose(mapped.values["resid"], same.values["resid"][:, [2, 5]], atol=1e-6)


def test_bad_inputs():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    with pytest.raises(ValueError, match="clean, corrupted: 6 and 5 tokens; give the same length or a position_map"):
        patch(lm, "abcdef", "abcde", "a")
    with pytest.raises(ValueError, match=r"position_map: pairs out of range \[\(6, 1\)\]"):
        patch(lm, "abcdef", "abcde", "a", position_map=[(6, 1)])
    with pytest.raises(ValueError, match="kinds: expected some of"):
        patch(lm, "abc", "abd", "a", kinds=("neurons",))
    with pytest.raises(ValueError, match="logit_diff needs a counterfactual"):
        patch(lm, "abc", "abd", "a", metric="logit_diff")
    with pytest.raises(ValueError, match="answer: 'ab' is 2 tokens"):
        patch(lm, "abc", "abd", "ab")
    # a grid whose every restored fraction would be 0 / 0 fails before its forwards
    with pytest.raises(ValueError, match=r"clean, corrupted: the prob is .* on both runs"):
        patch(lm, "abc", "abc", "a")
    with pytest.raises(ValueError, match="counterfactual: .*the logit difference would be 0"):
        patch(lm, "abc", "abd", "a", "a")
    with pytest.raises(ValueError, match="counterfactual: the same token as the answer"):
        patch(lm, "abc", "abd", "a", lm.tokenizer("a")["input_ids"][0])  # the answer's id, given as an id


def test_causal_tracing_on_the_real_model(real_lm, tmp_path, monkeypatch):
    clean, bad = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"
    r = patch(real_lm, clean, bad, " Paris", " Rome", kinds=("resid",), batch_size=96)
    assert r.clean > 0 > r.corrupted
    assert r.restored["resid"][-1, -1] == pytest.approx(1.0, abs=1e-3)  # the final residual at the last token
    assert float(r.restored["resid"][5:20, 2].min()) > 0.5  # the subject's token carries it through the middle
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    assert cli.main(["patch", "--clean", clean, "--corrupted", bad, "--answer", " Paris", "--counterfactual", " Rome",
                     "--kinds", "resid", "--batch-size", "96", "--out", str(tmp_path), "--no-progress"]) == 0
    saved = json.loads((tmp_path / "patch.json").read_text())
    assert len(saved["restored"]["resid"]) == 31 and (tmp_path / "patch.png").stat().st_size > 10_000
    assert cli.main(["patch", "--clean", clean, "--corrupted", "The Colosseum is in", "--answer", " Paris",
                     "--out", str(tmp_path / "b")]) == 2
