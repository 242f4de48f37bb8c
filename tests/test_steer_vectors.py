"""steer.vectors: ActAdd's vector against residuals captured by hand-written hooks (bit for bit), the
directions-file contract, tensor files, the write edit, and bad input; one check on SmolLM2."""
import random
import string

import pytest
import torch

from fusedlens import steer
from fusedlens.cli.steer import KINDS as CLI_KINDS
from fusedlens.core.models import LensModel
from fusedlens.intervene import run_with
from fusedlens.steer.vectors import DIRECTIONS_FORMAT, actadd_pair, check_site
from tiny_models import ARCHS, tiny_model, tiny_tokenizer


def _tiny(arch):
    return LensModel.from_hf(tiny_model(arch), tiny_tokenizer())


def _words(n):
    return "".join(random.choice(string.ascii_lowercase + " ") for _ in range(n))


def _hand_residual(lm, ids, site):
    """The residual at `site` [T, d] of ids [T] run alone, read by our own hook on the module."""
    got = {}
    kind, *idx = site.split(".")
    if kind == "embed":
        handle = lm.layers[0].register_forward_pre_hook(
            lambda m, args, kwargs: got.__setitem__("h", (args[0] if args else kwargs["hidden_states"]).clone()),
            with_kwargs=True)
    else:
        handle = lm.layers[int(idx[0])].register_forward_hook(
            lambda m, a, out: got.__setitem__("h", (out if torch.is_tensor(out) else out[0]).clone()))
    with torch.no_grad():
        lm.model(input_ids=ids[None], use_cache=False)
    handle.remove()
    return got["h"][0]


@pytest.mark.parametrize("arch", ARCHS)
def test_actadd_equals_the_hand_computed_residual_difference(arch):
    lm = _tiny(arch)
    plus, minus = _words(random.randint(1, 4)), _words(random.randint(5, 9))
    sites = ["embed", "resid.0", f"resid.{lm.n_layers - 1}"]
    vecs = steer.actadd_vectors(lm, plus, minus, sites)
    space = lm.tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    p = torch.tensor(lm.tokenizer(plus)["input_ids"])
    m = torch.tensor(lm.tokenizer(minus)["input_ids"])
    p = torch.cat([p, torch.full((m.numel() - p.numel(),), space)])  # the shorter prompt padded with spaces
    assert torch.equal(actadd_pair(lm, plus, minus)[0], p)
    for site in sites:
        want = _hand_residual(lm, p, site).double() - _hand_residual(lm, m, site).double()
        assert vecs[site].dtype == torch.float64 and vecs[site].shape == (m.numel(), lm.d_model)
        assert torch.equal(vecs[site], want), (arch, site)
        assert torch.equal(steer.actadd_vector(lm, plus, minus, site), want)
    assert float(vecs["resid.0"].norm()) > 0


def _directions_file(path, sites, d):
    vectors = {k: torch.nn.functional.normalize(torch.randn(len(sites), d), dim=-1) for k in KINDS_ALL}
    torch.save({"format": DIRECTIONS_FORMAT, "model": "tiny", "sites": sites, "vectors": vectors,
                "mean_pos": torch.randn(len(sites), d, dtype=torch.float64),
                "mean_neg": torch.randn(len(sites), d, dtype=torch.float64), "lda_ridge": 0.1, "position": "last"},
               path)
    return vectors


KINDS_ALL = ("mean_diff", "pca", "lda")


def test_directions_file_and_tensor_file(tmp_path, lm):
    assert tuple(CLI_KINDS) == steer.KINDS == KINDS_ALL
    sites = ["embed"] + [f"resid.{i}" for i in range(lm.n_layers)]
    path = str(tmp_path / "dirs.pt")
    vectors = _directions_file(path, sites, lm.d_model)
    for kind in KINDS_ALL:
        for i, site in enumerate(sites):
            v = steer.load_directions(path, kind, site, lm)
            assert v.dtype == torch.float64 and torch.equal(v, vectors[kind][i].double())
    t = torch.randn(lm.d_model)
    torch.save(t, tmp_path / "v.pt")
    assert torch.equal(steer.load_tensor(str(tmp_path / "v.pt"), lm), t.double())
    with pytest.raises(ValueError, match="^kind: 'bogus'"):
        steer.load_directions(path, "bogus", "resid.0", lm)
    with pytest.raises(ValueError, match="^site: 'mid.1' is not in the directions file"):
        steer.load_directions(path, "pca", "mid.1", lm)
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="^directions: .* is not a fusedlens.directions/1 file"):
        steer.load_directions(str(tmp_path / "bad.pt"), "pca", "resid.0", lm)
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match="^vector_file: .* cannot be read as a torch file"):
        steer.load_tensor(str(tmp_path / "junk.pt"), lm)
    with pytest.raises(ValueError, match="^vector_file: .* not found"):
        steer.load_tensor(str(tmp_path / "missing.pt"), lm)
    torch.save(torch.randn(lm.d_model + 1), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match="^vector_file: width"):
        steer.load_tensor(str(tmp_path / "wide.pt"), lm)


def test_the_edit_rounds_c_times_v_once_and_bad_input(lm):
    v = torch.randn(lm.d_model, dtype=torch.float64)
    c = random.uniform(-9, 9)
    e = steer.steer_edit(lm, v, "resid.1", c)
    assert e.op == "add" and e.positions is None and e.value.dtype == torch.float32
    assert torch.equal(e.value, (c * v).float())
    block = torch.randn(5, lm.d_model, dtype=torch.float64)
    assert steer.steer_edit(lm, block, "embed", 2.0).positions == [0, 1, 2, 3, 4]
    assert torch.equal(steer.unit(block), block[-1] / block[-1].norm())
    cases = [(dict(vector=torch.randn(lm.d_model + 3)), "^vector: width"),
             (dict(vector=torch.full((lm.d_model,), float("nan"))), "^vector: contains"),
             (dict(vector=[1.0] * lm.d_model), "^vector: expected a torch.Tensor"),
             (dict(site=f"resid.{lm.n_layers}"), "^site: .*out of range"),
             (dict(site="attn.0"), "^site: 'attn.0': steering writes residual sites only"),
             (dict(site="bogus"), "^site: unknown"),
             (dict(coef=float("inf")), "^coef: expected a finite number"),
             (dict(positions=[-1]), "^positions:"),
             (dict(vector=block, positions=[0]), "^positions: an ActAdd vector")]
    for change, message in cases:
        kw = dict(vector=v, site="resid.0", coef=1.0, positions=None) | change
        with pytest.raises(ValueError, match=message):
            steer.steer_edit(lm, kw["vector"], kw["site"], kw["coef"], positions=kw["positions"])
    for plus, minus, message in (("", "x", "^plus: expected a non-empty text"), ("x", None, "^minus:")):
        with pytest.raises(ValueError, match=message):
            steer.actadd_vector(lm, plus, minus, "resid.0")
    assert check_site(lm, "mid.0") == "mid.0"


def test_actadd_on_smollm2(real_lm):
    """SmolLM2: ActAdd's block equals the hand-captured difference at a middle layer, and the front
    position of a model without a BOS token is its attention sink (the block's large row)."""
    site = "resid.6"
    v = steer.actadd_vector(real_lm, "Love", "Hate", site)
    p, m = actadd_pair(real_lm, "Love", "Hate")
    assert p.numel() == m.numel() == v.shape[0] >= 2
    want = _hand_residual(real_lm, p, site).double() - _hand_residual(real_lm, m, site).double()
    assert torch.equal(v, want)
    assert real_lm.tokenizer.decode(p[-1:]) == " " and real_lm.tokenizer("Love")["input_ids"][0] == int(p[0])
    ids = torch.tensor(real_lm.tokenizer("I hate you because")["input_ids"])[None]
    with torch.no_grad():
        base = real_lm.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(run_with(real_lm, [steer.steer_edit(real_lm, v, site, 0.0)], ids), base)
    moved = run_with(real_lm, [steer.steer_edit(real_lm, v, site, 5.0)], ids)
    assert float((moved - base).abs().max()) > 1.0
