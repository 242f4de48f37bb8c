"""Residual capture: the right sites, only real positions, and padding-independent rows."""
import dataclasses

import pytest
import torch

from fusedlens import LensModel, ResidualCapture
from fusedlens.core.capture import residuals_from_tensors
from fusedlens.core.checks import IGNORE_INDEX
from tiny_models import ARCHS, VOCAB, random_batch, tiny_model

ATOL = RTOL = 1e-5  # float32; rows differ only by summation order


@pytest.fixture(scope="module", params=ARCHS)
def arch_lm(request):
    return request.param, LensModel.from_hf(tiny_model(request.param))


def pad_pair(a, b, side):
    """Two sequences in one batch, the shorter padded on `side` with random junk ids."""
    seq = max(len(a), len(b))
    ids = torch.randint(0, VOCAB, (2, seq))  # junk under the padding must not matter
    mask = torch.zeros(2, seq, dtype=torch.long)
    for row, s in enumerate((a, b)):
        sl = slice(seq - len(s), seq) if side == "left" else slice(0, len(s))
        ids[row, sl], mask[row, sl] = s, 1
    return ids, mask


@torch.no_grad()
def test_sites_match_hf_hidden_states(arch_lm):
    arch, lm = arch_lm
    L = lm.n_layers
    ids = random_batch(2, 8)
    res = ResidualCapture(lm).run(ids)
    assert res.sites == ["embed"] + [f"resid.{i}" for i in range(L)]
    assert res.hidden.shape == (L + 1, ids.numel(), lm.d_model)
    hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embedding output (with Gemma's sqrt(d) scaling); [i+1] is block i's
    # output except the last entry, which HF replaces by the final-normed state.
    torch.testing.assert_close(res.hidden[0], hs[0].flatten(0, 1), atol=ATOL, rtol=RTOL)
    for i in range(L - 1):
        torch.testing.assert_close(res.hidden[1 + i], hs[i + 1].flatten(0, 1), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(lm.norm(res.hidden[-1]), hs[-1].flatten(0, 1), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padding_gives_the_unpadded_rows(arch_lm, side):
    arch, lm = arch_lm
    a, b = torch.randint(0, VOCAB, (9,)), torch.randint(0, VOCAB, (5,))
    cap = ResidualCapture(lm, mid=True)  # tiny gpt_neox is sequential, so it has mid sites too
    alone = [cap.run(s[None]) for s in (a, b)]
    ids, mask = pad_pair(a, b, side)
    res = cap.run(ids, mask)
    assert res.hidden.shape[1] == len(a) + len(b) == int(mask.sum())
    torch.testing.assert_close(res.hidden, torch.cat([r.hidden for r in alone], 1), atol=ATOL, rtol=RTOL)
    assert res.batch_index.tolist() == [0] * len(a) + [1] * len(b)
    assert res.position.tolist() == mask.nonzero()[:, 1].tolist()
    assert torch.equal(res.input_ids, torch.cat([a, b]))
    # Targets: the next real token, IGNORE_INDEX at each sequence's last token.
    want = torch.cat([a[1:], torch.tensor([IGNORE_INDEX]), b[1:], torch.tensor([IGNORE_INDEX])])
    assert torch.equal(res.targets, want)


@torch.no_grad()
def test_llama_mid_is_input_plus_attention():
    lm = LensModel.from_hf(tiny_model("llama"))
    seen = {}
    hooks = []
    for i, block in enumerate(lm.layers):
        hooks.append(block.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: seen.__setitem__(("in", i), (args[0] if args else kwargs["hidden_states"])),
            with_kwargs=True))
        hooks.append(block.self_attn.register_forward_hook(
            lambda m, args, out, i=i: seen.__setitem__(("attn", i), out[0])))
    try:
        ids = random_batch(2, 6)
        res = ResidualCapture(lm, mid=True).run(ids)
    finally:
        for h in hooks:
            h.remove()
    assert res.sites[:3] == ["embed", "mid.0", "resid.0"]
    for i in range(lm.n_layers):
        want = (seen["in", i] + seen["attn", i]).flatten(0, 1)
        torch.testing.assert_close(res.hidden[res.sites.index(f"mid.{i}")], want, atol=ATOL, rtol=RTOL)
        # The mid residual is neither the block input nor its output.
        assert (res.hidden[res.sites.index(f"mid.{i}")] - seen["in", i].flatten(0, 1)).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gemma2", "mistral", "qwen2", "phi3"])
@torch.no_grad()
def test_mid_site_exists(arch):
    lm = LensModel.from_hf(tiny_model(arch))
    ids = random_batch(2, 5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    res = ResidualCapture(lm, mid=True, layers=[1]).run(ids, mask)
    assert res.sites == ["embed", "mid.1", "resid.1"]
    assert res.hidden.shape == (3, int(mask.sum()), lm.d_model)
    assert torch.isfinite(res.hidden).all()
    assert (res.hidden[1] - res.hidden[2]).abs().max() > 1e-3


def test_parallel_residual_has_no_mid_site():
    lm = LensModel.from_hf(tiny_model("gpt_neox", use_parallel_residual=True))
    with pytest.raises(ValueError, match="parallel"):
        ResidualCapture(lm, mid=True).run(random_batch(1, 4))
    ResidualCapture(lm, mid=False).run(random_batch(1, 4))  # the rest still works


@torch.no_grad()
def test_consumer_sees_every_site_in_order(arch_lm):
    arch, lm = arch_lm
    got = []
    cap = ResidualCapture(lm, mid=True, consumer=lambda site, rows: got.append((site, rows.clone())), keep=False)
    ids = random_batch(2, 5)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    res = cap.run(ids, mask)
    assert [s for s, _ in got] == cap.sites == res.sites
    assert all(rows.shape == (int(mask.sum()), lm.d_model) for _, rows in got)
    kept = ResidualCapture(lm, mid=True).run(ids, mask)
    torch.testing.assert_close(torch.stack([r for _, r in got]), kept.hidden, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@torch.no_grad()
def test_forward_stops_after_last_captured_block(arch):
    lm = LensModel.from_hf(tiny_model(arch))
    calls = [0] * lm.n_layers
    hooks = [b.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, b in enumerate(lm.layers)]
    try:
        res = ResidualCapture(lm, layers=[0]).run(random_batch(2, 4))
        assert res.sites == ["embed", "resid.0"]
        assert calls == [1] + [0] * (lm.n_layers - 1)
        ResidualCapture(lm, layers=[0], full_forward=True).run(random_batch(2, 4))
        assert calls == [2] + [1] * (lm.n_layers - 1)
    finally:
        for h in hooks:
            h.remove()
    # Negative indices count from the end; duplicates collapse.
    assert ResidualCapture(lm, layers=[-1, 2, 0], embed=False).sites == ["resid.0", f"resid.{lm.n_layers - 1}"]


@pytest.mark.parametrize("ids, mask, match", [
    (torch.tensor([[1, 2, VOCAB]]), None, "outside"),
    (torch.tensor([[1, -1, 3]]), None, "outside"),
    (torch.tensor([[1, 2, 3]]), torch.ones(1, 2, dtype=torch.long), "attention_mask"),
    (torch.tensor([[1, 2, 3]]), torch.ones(3, dtype=torch.long), "attention_mask"),
    (torch.tensor([[1, 2, 3]]), torch.zeros(1, 3, dtype=torch.long), "no real token"),
    (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 1]]), "0 .*and 1"),
    (torch.zeros(0, dtype=torch.long), None, "empty"),
    (torch.zeros(2, 0, dtype=torch.long), None, "empty"),
    (torch.tensor([[1.0, 2.0]]), None, "integer"),
])
def test_bad_input(ids, mask, match):
    lm = LensModel.from_hf(tiny_model("llama"))
    with pytest.raises(ValueError, match=match):
        ResidualCapture(lm).run(ids, mask)


@pytest.mark.parametrize("layers", [[], [3], [-4], [0, 7]])
def test_bad_layers(layers):
    lm = LensModel.from_hf(tiny_model("llama"))
    with pytest.raises(ValueError, match="layers"):
        ResidualCapture(lm, layers=layers)


def test_parse_layers():
    from fusedlens.core.capture import parse_layers

    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("1-2", 4) == [1, 2] and parse_layers("0,-1", 4) == [0, 3]
    for bad in ("x", "1-a", ""):
        with pytest.raises(ValueError, match="layers"):
            parse_layers(bad, 4)


@pytest.mark.parametrize("spec", ["99", "-99", "4", "-5", "0,4", "2-9", "-9-1"])
def test_out_of_range_layers_are_errors_not_wrapped(spec):
    # the 0.1 parser took int(x) % n_layers: "99" on a 30-layer model silently decoded layer 9
    from fusedlens.core.capture import parse_layers

    with pytest.raises(ValueError, match=r"layers: .*\[-4, 4\)"):
        parse_layers(spec, 4)
    assert parse_layers("-4", 4) == [0] and parse_layers("-2--1", 4) == [2, 3]


# --- models that are not HF modules, and tensors another tool saved --------------------------

def hook_point_lm(lm: LensModel, extra: dict | None = None) -> LensModel:
    """The tiny llama described the way a non-HF model is: hook points (the embedding and the blocks,
    whose outputs are the embed and resid sites) and a forward of its own."""
    points = {"embed": lm.embed, **{f"resid.{i}": block for i, block in enumerate(lm.layers)}, **(extra or {})}
    return dataclasses.replace(lm, hook_points=points,
                               run_forward=lambda ids, mask, _pos: lm.model(input_ids=ids, attention_mask=mask))


@torch.no_grad()
def test_hook_points_capture_what_the_hf_hooks_do():
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = random_batch(2, 7)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    want = ResidualCapture(lm, layers=[0, 1]).run(ids, mask)
    calls = []
    handle = lm.layers[2].register_forward_hook(lambda *_: calls.append(1))
    try:
        got = ResidualCapture(hook_point_lm(lm), layers=[0, 1]).run(ids, mask)
    finally:
        handle.remove()
    assert got.sites == want.sites and not calls  # the forward stopped after resid.1 here too
    assert torch.equal(got.hidden, want.hidden) and torch.equal(got.targets, want.targets)


def test_missing_and_unreached_hook_points():
    lm = LensModel.from_hf(tiny_model("llama"))
    with pytest.raises(ValueError, match=r"no hook point for site\(s\) mid.0, mid.1, mid.2 \(no mid-layer residual"):
        ResidualCapture(hook_point_lm(lm), mid=True).run(random_batch(1, 4))
    unused = torch.nn.Identity()
    with pytest.raises(RuntimeError, match="never reached site.s. mid.0"):
        ResidualCapture(hook_point_lm(lm, {"mid.0": unused}), mid=True, layers=[0]).run(random_batch(1, 4))


@torch.no_grad()
def test_residuals_from_tensors_equal_capture(arch_lm):
    arch, lm = arch_lm
    ids = random_batch(3, 8)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    L = lm.n_layers  # hidden_states[L] is post-norm: compare the sites before it
    sites = ["embed"] + [f"resid.{i}" for i in range(L - 1)]
    got = residuals_from_tensors(sites, hs[:L], ids, mask, vocab_size=lm.vocab_size)
    want = ResidualCapture(lm, layers=list(range(L - 1))).run(ids, mask)
    assert got.sites == want.sites
    torch.testing.assert_close(got.hidden, want.hidden, atol=ATOL, rtol=RTOL)
    for name in ("input_ids", "targets", "batch_index", "position"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    as_tuples = residuals_from_tensors(sites, [(h[:1], None) for h in hs[:L]], ids[:1], None)  # HF blocks' tuples
    torch.testing.assert_close(as_tuples.hidden, torch.stack([h[0] for h in hs[:L]]))


@pytest.mark.parametrize("sites, tensors, match", [
    (["resid.0"], [], "one tensor per site"),
    ([], [], "one tensor per site"),
    (["resid.0"], [torch.randn(2, 6, 8)], r"resid.0: shape \(2, 6, 8\) does not match input_ids \(2, 5\)"),
    (["a", "b"], [torch.randn(2, 5, 8), torch.randn(2, 5, 4)], "b: last dimension 4 does not match a's d_model"),
    (["resid.0"], [torch.randint(0, 3, (2, 5, 8))], "floating-point"),
])
def test_residuals_from_tensors_bad_input(sites, tensors, match):
    with pytest.raises(ValueError, match=match):
        residuals_from_tensors(sites, tensors, random_batch(2, 5))
    with pytest.raises(ValueError, match="outside"):
        residuals_from_tensors(["r"], [torch.randn(1, 2, 4)], torch.tensor([[1, VOCAB]]), vocab_size=VOCAB)


def _bos_tokenizer():
    """The tiny character tokenizer, made to put <s> (id 1) in front of every text, as Gemma's does."""
    from tokenizers import processors
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok("ab")["input_ids"][0] == 1 and tok("ab", add_special_tokens=False)["input_ids"][0] != 1
    return tok


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@torch.no_grad()
def test_rows_without_bos_are_read_behind_it(arch):
    """A model whose tokenizer adds BOS reads a window without it behind one: the rows equal, bit for bit,
    those of the same window given with BOS, minus the BOS row; a row that has BOS gets no second one."""
    from fusedlens.core.capture import capture_residuals

    lm = LensModel.from_hf(tiny_model(arch), _bos_tokenizer())
    assert lm.bos_id == 1 and LensModel.from_hf(tiny_model(arch)).bos_id is None
    ids = torch.randint(4, VOCAB, (2, 7))
    got = capture_residuals(lm, ids)
    with_bos = capture_residuals(lm, torch.cat([torch.ones(2, 1, dtype=torch.long), ids], 1))
    keep = with_bos.position > 0
    assert torch.equal(got.hidden, with_bos.hidden[:, keep])
    assert torch.equal(got.targets, torch.cat([ids[0, 1:], torch.tensor([IGNORE_INDEX]), ids[1, 1:],
                                               torch.tensor([IGNORE_INDEX])]))
    assert got.position.tolist() == list(range(7)) * 2
    # a padded batch mixing a row with BOS and one without: each as its own window behind one BOS
    a, b = torch.cat([torch.tensor([1]), ids[0, :4]]), ids[1, :6]
    ids2 = torch.zeros(2, 6, dtype=torch.long)
    ids2[0, :5], ids2[1] = a, b
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    mixed = capture_residuals(lm, ids2, mask)
    alone_a, alone_b = capture_residuals(lm, a[None]), capture_residuals(lm, b[None])
    torch.testing.assert_close(mixed.hidden, torch.cat([alone_a.hidden, alone_b.hidden], 1), atol=ATOL, rtol=RTOL)
