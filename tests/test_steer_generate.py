"""steer.generate and the steering edit on tiny random models of every family: c = 0 is bit for bit no
steering (logits and generated ids, greedy and sampled); the edit equals a hand-written hook adding
c · v (float64, then cast) on the module itself; positions; batched generation; bad input."""
import random

import pytest
import torch

from fusedlens import steer
from fusedlens.core.models import LensModel
from fusedlens.core.structure import block_parts
from fusedlens.intervene import generate as generate_with
from fusedlens.intervene import run_with
from tiny_models import ARCHS, VOCAB, random_batch, tiny_model, tiny_tokenizer


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids, use_cache=False).logits


def _hand_add(lm, site, value, positions=None):
    """Our own hook on the module a site names, adding `value` (already c · v cast) at positions."""
    def add(h):
        h = h.clone()
        if positions is None:
            h += value
        else:
            h[:, positions] += value
        return h

    kind, *idx = site.split(".")
    if kind == "embed":
        return lm.layers[0].register_forward_pre_hook(
            lambda m, args, kwargs: ((add(args[0]), *args[1:]), kwargs) if args
            else (args, {**kwargs, "hidden_states": add(kwargs["hidden_states"])}), with_kwargs=True)
    if kind == "mid":  # the residual after attention: the attention output (after any post-norm) carries it
        parts = block_parts(lm, heads=False, neurons=False)[int(idx[0])]
        module = parts.attn_post_norm if parts.attn_post_norm is not None else parts.attn
    else:
        module = lm.layers[int(idx[0])]
    return module.register_forward_hook(lambda m, a, out: add(out) if torch.is_tensor(out) else (add(out[0]), *out[1:]))


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_coefficient_is_bit_identical(arch):
    lm = LensModel.from_hf(tiny_model(arch))
    ids = random_batch(2, 7)
    base = _logits(lm, ids)
    v = torch.randn(lm.d_model, dtype=torch.float64) * 10
    block = torch.randn(3, lm.d_model, dtype=torch.float64) * 10
    for site in ("embed", "resid.0", "mid.1", f"resid.{lm.n_layers - 1}"):
        for vec in (v, block):
            assert torch.equal(run_with(lm, [steer.steer_edit(lm, vec, site, 0.0)], ids), base), (arch, site)
            moved = run_with(lm, [steer.steer_edit(lm, vec, site, 1.5)], ids)
            assert not torch.equal(moved, base), (arch, site)
    prompt = random_batch(1, 5)[0]
    for sample in (False, True):
        seed = random.randrange(2 ** 31)
        g = steer.generate(lm, prompt, v, "resid.1", 0.0, n_tokens=6, sample=sample, seed=seed)
        assert g.steered_ids == g.unsteered_ids, (arch, sample)
        plain = generate_with(lm, prompt, [], 6, sample=torch.Generator().manual_seed(seed) if sample else None)
        assert g.unsteered_ids == plain.tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_edit_equals_a_hand_hook(arch):
    """The steered logits equal, bit for bit, those of our own hook adding (c · v in float64) cast to the
    model's dtype; on a float64 copy of the model, those of a float64 hook adding c · v."""
    for dtype in (torch.float32, torch.float64):
        lm = LensModel.from_hf(tiny_model(arch).to(dtype))
        ids = random_batch(3, 6)
        c = random.uniform(-6, 6)
        v = torch.randn(lm.d_model, dtype=torch.float64)
        block = torch.randn(4, lm.d_model, dtype=torch.float64)
        for site in ("embed", "resid.1"):
            for vec, positions, hand_positions in ((v, None, None), (v, [1, 4], [1, 4]), (block, None, [0, 1, 2, 3])):
                value = (c * vec).to(dtype)
                handle = _hand_add(lm, site, value, hand_positions)
                want = _logits(lm, ids)
                handle.remove()
                got = run_with(lm, [steer.steer_edit(lm, vec, site, c, positions=positions)], ids)
                assert torch.equal(got, want), (arch, dtype, site, positions)
                if hand_positions is not None:  # causality: positions before the first edited one are untouched
                    first = hand_positions[0]
                    assert torch.equal(got[:, :first], _logits(lm, ids)[:, :first])


@pytest.mark.parametrize("arch", ("llama", "gpt2"))
def test_generation_with_and_without(arch):
    lm = LensModel.from_hf(tiny_model(arch), tiny_tokenizer())
    v = torch.randn(lm.d_model, dtype=torch.float64)
    c = random.uniform(2, 6)
    g = steer.generate(lm, "abc de", v, "resid.1", c, n_tokens=5)
    ids = torch.tensor(lm.tokenizer("abc de")["input_ids"])
    assert g.unsteered_ids == generate_with(lm, ids, [], 5).tolist()
    assert g.steered_ids == generate_with(lm, ids, [steer.steer_edit(lm, v, "resid.1", c)], 5).tolist()
    assert g.unsteered == lm.tokenizer.decode(g.unsteered_ids)
    d = g.to_dict()
    assert d["format"] == "fusedlens.SteerGeneration/1" and d["coef"] == c and d["positions"] == "all"
    # sampled runs are reproducible from the seed
    a = steer.generate(lm, "abc de", v, "resid.1", c, n_tokens=5, sample=True, seed=7, top_p=0.9)
    b = steer.generate(lm, "abc de", v, "resid.1", c, n_tokens=5, sample=True, seed=7, top_p=0.9)
    assert a.steered_ids == b.steered_ids and a.unsteered_ids == b.unsteered_ids


def test_batched_generation_rows_match_single_rows():
    """intervene.generate with [B, T] ids and one edit per row gives each row's own continuation."""
    lm = LensModel.from_hf(tiny_model("llama"))
    prompt = random_batch(1, 5)[0]
    vecs = [torch.randn(lm.d_model, dtype=torch.float64) * 3 for _ in range(3)]
    edits = [steer.steer_edit(lm, v, "resid.0", 2.0, rows=[r + 1]) for r, v in enumerate(vecs)]
    out = generate_with(lm, prompt[None].expand(4, -1).contiguous(), edits, 6)
    assert out.shape == (4, 6)
    assert out[0].tolist() == generate_with(lm, prompt, [], 6).tolist()
    for r, v in enumerate(vecs):
        assert out[r + 1].tolist() == generate_with(lm, prompt, [steer.steer_edit(lm, v, "resid.0", 2.0)], 6).tolist()


def test_sampling_draws_from_the_nucleus():
    """_draw keeps exactly the top tokens whose probability reaches top_p: with top_p tiny, it is argmax."""
    from fusedlens.intervene.patchscope import _draw

    logits = torch.randn(64, VOCAB)
    g = torch.Generator().manual_seed(random.randrange(2 ** 31))
    assert torch.equal(_draw(logits, g, 1.0, 1e-9), logits.argmax(-1))
    picks = _draw(logits[:1].expand(4000, -1), g, 1.0, 1.0)
    p = torch.softmax(logits[0].double(), -1)
    freq = torch.bincount(picks, minlength=VOCAB).double() / 4000
    assert float((freq - p).abs().sum()) < 0.35  # total variation of 4000 draws from 211 outcomes: ~0.18


def test_bad_input(lm):
    v = torch.randn(lm.d_model)
    for kw, message in ((dict(prompt=""), "^prompt: expected a non-empty text"),
                        (dict(prompt="   "), "^prompt: expected a non-empty text"),
                        (dict(vector=torch.randn(lm.d_model - 1)), "^vector: width"),
                        (dict(vector=torch.tensor([float("nan")] * lm.d_model)), "^vector: contains"),
                        (dict(site=f"resid.{lm.n_layers + 2}"), "^site:"),
                        (dict(vector=torch.randn(9, lm.d_model)), "^prompt: 3 token"),
                        (dict(positions=[5]), "^positions: \\[5\\] out of range"),
                        (dict(n_tokens=0), "^n_tokens:"),
                        (dict(sample=True, top_p=0.0), "^temperature, top_p:")):
        args = dict(prompt="abc", vector=v, site="resid.0", coef=2.0) | kw
        prompt, vector, site, coef = (args.pop(k) for k in ("prompt", "vector", "site", "coef"))
        with pytest.raises(ValueError, match=message):
            steer.generate(lm, prompt, vector, site, coef, **args)
