"""concepts.api / result, report.concepts and `fusedlens concepts`: the tables of tiny random models of every
family (tied and untied) and of SmolLM2 against float64 numpy on their own matrices, tied detection, the
JSON round trip, too-few pairs, and the command line."""
import json
import math
import os

import numpy as np
import pytest
import torch

from concepts_reference import causal_gram, tables
from fusedlens import LensModel
from fusedlens.cli import main
from fusedlens.concepts import BUILTIN, ConceptsResult
from fusedlens.concepts import concept_geometry as concepts
from fusedlens.report.concepts import format_concepts_table, write_concepts_outputs
from tiny_models import ARCHS, EXPECTED, tiny_model, tiny_tokenizer

LOWER = "abcdefghijklmnop"
LISTS = {"case": [[c, c.upper()] for c in LOWER],
         "next digit": [[str(i), str(i + 1)] for i in range(9)],
         "bracket": [["(", ")"], ["[", "]"], ["{", "}"], ["<", ">"]],
         "lonely": [["x", "y"], ["xx", "yy"]],   # one usable pair
         "multi": [["ab", "cd"]]}                # none usable


def _tiny_lm(arch, **kw):
    seed = int(torch.randint(0, 10**6, ()))  # fresh weights each run; printed, so a failure names it
    print(f"{arch} seed {seed}")
    return LensModel.from_hf(tiny_model(arch, seed=seed, **kw), tiny_tokenizer())


def _reference(lm, result):
    """Every table of `result` recomputed in numpy from the model's own matrices and the result's ids."""
    gamma = lm.unembed.weight.detach().double().numpy()
    emb = lm.model.get_input_embeddings().weight.detach().double().numpy()
    pairs = [p for c in result.concepts for p in result.pairs[c]]
    ids = np.array([p["ids"] for p in pairs])
    groups, start = [], 0
    for c in result.concepts:
        groups.append(list(range(start, start + len(result.pairs[c]))))
        start += len(result.pairs[c])
    d_gamma, d_g = gamma[ids[:, 1]] - gamma[ids[:, 0]], emb[ids[:, 1]] - emb[ids[:, 0]]
    return {"euclidean": tables(d_gamma, d_g, groups), "causal": tables(d_gamma, d_g, groups, causal_gram(gamma))}


def _check_against_numpy(result, ref, atol):
    for kind in ("euclidean", "causal"):
        for name, want in ref[kind].items():
            got = getattr(result.geometry[kind], name).numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, equal_nan=True, err_msg=f"{kind} {name}")


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_families_against_numpy(arch):
    lm = _tiny_lm(arch)
    r = concepts(lm, LISTS)
    assert r.n_pairs() == {"case": 16, "next digit": 9, "bracket": 4, "lonely": 1, "multi": 0}
    assert len(r.skipped) == 2 and all("not one token" in s["reason"] for s in r.skipped)
    assert all(p["form"] == "bare" for c in r.concepts for p in r.pairs[c])  # " a" is two characters
    assert (r.tied is not None) == EXPECTED[arch][2]
    _check_against_numpy(r, _reference(lm, r), atol=1e-9)
    for kind in ("euclidean", "causal"):
        g = r.geometry[kind]
        assert math.isnan(float(g.within[3])) and math.isnan(float(g.within[4]))  # < 2 pairs: NaN, stated
        a = g.alignment_pairs
        if r.tied:  # Δg = Δγ: trivially 1
            np.testing.assert_allclose(a.numpy(), 1.0, atol=1e-12)
        else:  # random untied matrices: the alignment is a real measurement, far from 1 on average
            assert float(a.mean()) < 0.9
    assert r.ridge == 0.0 and "full rank" in r.inner_product
    assert "fewer than 2 usable pairs" in format_concepts_table(r) and "lonely, multi" in r.to_json()["too_few_pairs"]


def test_equal_values_tie_and_head_bias():
    lm = _tiny_lm("llama")  # untied
    with torch.no_grad():
        lm.model.get_input_embeddings().weight.copy_(lm.unembed.weight)
    r = concepts(lm, {"case": LISTS["case"]})
    assert r.tied == "equal values" and "trivially" in r.alignment_note
    lm = _tiny_lm("gpt2", lm_head_bias=True)  # untied head with a bias: the bias is no direction
    r = concepts(lm, {"case": LISTS["case"]})
    assert r.tied is None and lm.unembed.bias is not None
    _check_against_numpy(r, _reference(lm, r), atol=1e-9)


def test_json_round_trip_and_outputs(tmp_path):
    lm = _tiny_lm("phi3")
    r = concepts(lm, LISTS)
    files = write_concepts_outputs(r, str(tmp_path), "tiny")
    assert [os.path.basename(f) for f in files] == ["tiny.json", "tiny.png", "tiny.txt", "tiny_directions.pt"]
    with open(tmp_path / "tiny.json") as f:
        raw = json.load(f)  # strict JSON: NaN written as null
    assert raw["geometry"]["causal"]["pairs"][3][3] is None and raw["n_skipped"] == 2
    back = ConceptsResult.load_json(str(tmp_path / "tiny.json"))
    for kind in ("euclidean", "causal"):
        for name in ("pairs", "directions", "alignment", "alignment_pairs"):
            assert torch.equal(getattr(back.geometry[kind], name).nan_to_num(7.0),
                               getattr(r.geometry[kind], name).nan_to_num(7.0)), (kind, name)
    for kind, numbers in r.summary().items():
        assert back.summary()[kind] == pytest.approx(numbers, nan_ok=True, rel=0, abs=0)
    assert back.concepts == r.concepts and back.pairs == r.pairs and back.tied == r.tied
    saved = torch.load(tmp_path / "tiny_directions.pt")
    gamma = lm.unembed.weight.detach().double()
    ids = torch.tensor([p["ids"] for p in r.pairs["case"]])
    assert torch.allclose(saved["directions"][0], (gamma[ids[:, 1]] - gamma[ids[:, 0]]).mean(0), atol=1e-12)
    with pytest.raises(ValueError, match="^path:"):
        other = tmp_path / "other.json"
        other.write_text("{\"format\": \"something else\"}")
        ConceptsResult.load_json(str(other))


def test_no_usable_pair_is_a_value_error():
    with pytest.raises(ValueError, match="^lists: no pair") as e:
        concepts(_tiny_lm("llama"), {"multi": [["ab", "cd"]]})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="^lm:"):
        concepts("not a model")


def test_command_line(model_dir, tmp_path, capsys):
    path = tmp_path / "lists.json"
    path.write_text(json.dumps(LISTS))
    out = tmp_path / "out"
    assert main(["concepts", "--model", model_dir, "--concepts", str(path), "--out", str(out), "--name", "t",
                 "--no-progress"]) == 0
    assert {"t.json", "t.png", "t.txt", "t_directions.pt"} <= set(os.listdir(out))
    text = capsys.readouterr().out
    assert "case" in text and "skipped: 2" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    for argv, words in ((["--concepts", str(bad)], "not valid JSON"), (["--concepts", "male-femal"], "unknown concept"),
                        (["--concepts", str(path), "--name", "a/b"], "name:")):
        assert main(["concepts", "--model", model_dir, "--out", str(out), *argv]) == 2
        assert words in capsys.readouterr().err
    assert main(["concepts", "--list-builtin"]) == 0
    assert "male→female" in capsys.readouterr().out


def test_smollm2_against_numpy_and_the_causal_structure(real_lm):
    r = concepts(real_lm)
    assert r.tied == "same storage" and r.ridge == 0.0
    tok = real_lm.tokenizer
    king = next(p for p in r.pairs["male→female"] if p["x"] == "king")
    assert king["form"] == "space" and king["ids"] == tok.encode(" king", add_special_tokens=False) + \
        tok.encode(" queen", add_special_tokens=False)
    for c in r.concepts:  # every used word is one token in the form stated
        for p in r.pairs[c]:
            pre = " " if p["form"] == "space" else ""
            assert [tok.encode(pre + p["x"], add_special_tokens=False), tok.encode(pre + p["y"], add_special_tokens=False)] \
                == [[p["ids"][0]], [p["ids"][1]]]
    assert sum(r.n_pairs().values()) + len(r.skipped) == sum(len(v) for v in BUILTIN.values())
    _check_against_numpy(r, _reference(real_lm, r), atol=1e-8)
    s = r.summary()["causal"]
    # the sanity check that can fail: pairs of one concept agree more than pairs of different concepts
    assert s["within_mean"] > s["between_mean"]
    np.testing.assert_allclose(r.geometry["euclidean"].alignment_pairs.numpy(), 1.0, atol=1e-12)
