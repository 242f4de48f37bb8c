"""direct_logit_attribution(): the decomposition sums to the model's logits, on tiny models of every family and on SmolLM2.

The float32 run's block-level components (embed, attn.i, mlp.i, bias) must add up to the raw final
logits that a float64 copy of the model computes, for a random vocabulary subset, the true next
token, the final top-1 and the logit difference; heads and neurons to their blocks. The extreme
tokens of each component row come from ops.logit_extremes and are checked against the float64
product of that component's row with W_U.
"""
import json

import pytest
import torch

from fusedlens import cli
from fusedlens.core.models import LensModel
from fusedlens.core.components import ComponentCapture, Frozen
from fusedlens.dla.attribution import component_rows
from fusedlens.dla import direct_logit_attribution as dla
from tiny_models import ARCHS, VOCAB, tiny_model, tiny_tokenizer

F32 = 2e-5  # |sum - logit| / max(1, |logit|), float32 sums of ~100 terms


def _logits64(model, ids):
    """Raw final logits (before any soft-cap) of a float64 copy of the model, from its own final norm and head."""
    m64 = LensModel.from_hf(model.double())
    cap = ComponentCapture(m64, heads=False)
    c, _ = cap.run(ids)
    out = m64.norm(c.final) @ m64.unembed.weight.T
    return out if m64.unembed.bias is None else out + m64.unembed.bias


@pytest.mark.parametrize("arch", ARCHS)
def test_decomposition_sums_to_the_logits(arch):
    model = tiny_model(arch, lm_head_bias=arch == "llama")
    lm = LensModel.from_hf(model, tiny_tokenizer())
    prompts = ["ab cd ef", "xyz"]
    subset = torch.randperm(VOCAB)[:6].tolist()
    r = dla(lm, prompts, ("head", "neuron"), answer="a", counterfactual="b", tokens=subset, k=3)
    ids = [torch.tensor(lm.tokenizer(p)["input_ids"]) for p in prompts]
    want = torch.cat([_logits64(tiny_model(arch, lm_head_bias=arch == "llama"), i[None]) for i in ids])
    for kind in r.kinds:
        rows = r.rows_of(kind)
        err = r.decomposition_error(kind)
        assert max(err.values()) < F32, (kind, err)
        if kind == "diff":
            a, b = lm.tokenizer.convert_tokens_to_ids("a"), lm.tokenizer.convert_tokens_to_ids("b")
            w = want[rows, a] - want[rows, b]
        else:
            w = want[rows, r.targets[kind][rows]]
        block = [r.index(n) for n in r.components if n.split(".")[0] in ("embed", "attn", "mlp", "bias")]
        got = r.contrib[kind][block][:, rows].double().sum(0)
        assert float(((got - w).abs() / w.abs().clamp(min=1)).max()) < F32, kind
    assert r.rows_of("diff").tolist() == [7, 10]  # each prompt's last position
    assert torch.isnan(r.contrib["next"][:, [7, 10]]).all()  # no next token there


def test_extremes_are_the_component_rows_extremes():
    lm = LensModel.from_hf(tiny_model("gpt2"), tiny_tokenizer())  # LayerNorm: the centring matters
    r = dla(lm, ["hello there"], ("head",), k=4, backend="cpu")
    c, _ = ComponentCapture(lm, heads=True).run(torch.tensor(lm.tokenizer("hello there")["input_ids"])[None])
    names, rows = component_rows(c, Frozen.of(lm.norm, c.final))
    assert names == r.extreme_components and rows.shape[:2] == (1 + 2 * lm.n_layers + 4 * lm.n_layers, 11)
    z = rows.double() @ lm.unembed.weight.double().T
    top, bottom = z.topk(4, -1), (-z).topk(4, -1)
    assert torch.allclose(r.extremes.top_logits.double(), top.values, atol=1e-5)
    assert torch.allclose(r.extremes.bottom_logits.double(), -bottom.values, atol=1e-5)
    # the direct effect on a token equals the component row's logit of it
    for name in ("attn.1", "head.2.3", "embed"):
        j, e = r.index(name), names.index(name)
        tok = int(r.targets["top1"][4])
        assert abs(float(r.contrib["top1"][j, 4]) - float(z[e, 4, tok])) < 1e-5


def test_bad_inputs():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    for components, match in ((("attn", "heads"), "components: unknown 'heads'"),
                              (("head.9.1",), r"layer 9 out of range \[0, 3\)"),
                              (("head.1.4",), r"head 4 out of range \[0, 4\)"),
                              (("neuron.0.96",), r"neuron 96 out of range \[0, 96\)"),
                              (("head.1",), "needs 2 index")):
        with pytest.raises(ValueError, match=match):
            dla(lm, "abc", components)
    with pytest.raises(ValueError, match=r"counterfactual: 'bc' is 2 tokens \['b', 'c'\], expected exactly one"):
        dla(lm, "abc", answer="a", counterfactual="bc")
    with pytest.raises(ValueError, match="answer: expected one token per prompt"):
        dla(lm, ["abc", "de"], answer=["a", "b", "c"])
    with pytest.raises(ValueError, match="sources: expected head names"):
        dla(lm, "abc", sources=["attn.1"])
    with pytest.raises(ValueError, match=r"head 7 out of range"):
        dla(lm, "abc", sources=["head.1.7"])
    with pytest.raises(ValueError, match="counterfactual: needs an answer"):
        dla(lm, "abc", counterfactual="b")
    with pytest.raises(ValueError, match="prompt 0 has 129 tokens, more than the model's context of 128"):
        dla(lm, "a" * 129)
    r = dla(lm, "abc", k=0)
    with pytest.raises(ValueError, match="kind: expected one of"):
        r.mean("answer")
    with pytest.raises(ValueError, match="extremes: not computed"):
        r.extreme_tokens("attn.0", 0)


def test_frame_and_json(tmp_path):
    lm = LensModel.from_hf(tiny_model("qwen2"), tiny_tokenizer())
    r = dla(lm, ["ab", "cde"], ("attn", "mlp"), answer=["a", "b"], counterfactual=["c", "d"], k=2,
            sources=["head.2.1"], batch_size=1)  # two batches: the source columns are padded to the longest
    split = r.sources["head.2.1"]["diff"]
    assert split.shape == (5, 3) and float(split[1, 2]) == 0
    rows = r.rows_of("diff")
    assert torch.allclose(split[rows].sum(1), r.contrib["diff"][r.index("head.2.1"), rows], atol=1e-5)
    blocks = [n for n in r.components if not n.startswith(("head.", "attn_bias."))]  # sources add the heads
    frame = r.to_frame(kinds=["diff"], components=blocks)
    assert len(frame) == len(blocks) * 2 and set(frame["position"]) == {1, 2}
    assert abs(float(frame["contribution"].sum()) - float(r.logits["diff"].nansum())) < 1e-4
    r.save_json(str(tmp_path / "d.json"))
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["components"] == r.components and len(saved["contrib"]["diff"][0]) == 5
    assert saved["extremes"]["components"][0] == "embed" and len(saved["sources"]["head.2.1"]["next"]) == 5


def test_ioi_on_the_real_model(real_lm, tmp_path, capsys, monkeypatch):
    prompt = "When Mary and John went to the store, John gave a drink to"
    before = real_lm.model.config._attn_implementation  # sdpa: the per-source split runs eager, then restores it
    r = dla(real_lm, prompt, ("attn", "mlp", "head"), answer=" Mary", counterfactual=" John", k=5,
            sources=["head.23.3"])
    assert real_lm.model.config._attn_implementation == before
    by_source = r.sources["head.23.3"]["diff"][-1]
    assert abs(float(by_source.sum()) - float(r.contrib["diff"][r.index("head.23.3"), -1])) < 1e-4
    err = r.decomposition_error("diff")
    assert err["blocks"] < F32 and err["heads"] < F32, err
    assert float(r.logits["diff"][-1]) > 2  # SmolLM2 prefers Mary
    # the float64 recomputation of the final logits agrees with the model's own logits
    with torch.no_grad():
        ids = real_lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
        logits = real_lm.model(input_ids=ids).logits[0, -1].double()
    mary, john = (real_lm.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))
    assert abs(float(r.logits["diff"][-1]) - float(logits[mary] - logits[john])) < 1e-3
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    rc = cli.main(["dla", "--prompt", prompt, "--answer", " Mary", "--counterfactual", " John", "--k", "3", "--sources",
                   "head.23.3",
                   "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "sum check" in printed and "attn.23" in printed and "head.23.3 by source position" in printed
    assert (tmp_path / "dla_heads.png").stat().st_size > 10_000 and (tmp_path / "dla_blocks.png").stat().st_size > 10_000
    assert cli.main(["dla", "--prompt", prompt, "--answer", " Mary", "--counterfactual", " Johnny Cash",
                     "--out", str(tmp_path / "b")]) == 2
