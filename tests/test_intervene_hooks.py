"""intervene.hooks: write hooks on tiny random models of every family.

Identities bit for bit (adding zero, scaling by one, the identity function, replacing a state by
itself), causality (an edit at the last position leaves earlier logits bit for bit), each site's
edit against a float64 hook written by hand on the module itself, per-row edits in one batch
against one row at a time, and bad input.
"""
import pytest
import torch

from fusedlens.core.capture import capture_residuals
from fusedlens.core.models import LensModel
from fusedlens.core.components import ComponentCapture
from fusedlens.core.structure import block_parts
from fusedlens.intervene import Edit, Intervention, run_with
from tiny_models import ARCHS, random_batch, tiny_model

SITES = ("embed", "resid.1", "mid.1", "attn.2", "mlp.0", "head.1.2")


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_identities_and_causality(arch):
    lm = LensModel.from_hf(tiny_model(arch))
    ids = random_batch(2, 6)
    base = _logits(lm, ids)
    for site in SITES:
        for op, value in (("add", 0.0), ("scale", 1.0), ("apply", lambda h: h)):
            assert torch.equal(run_with(lm, [Edit(site, op, value)], ids), base), (site, op)
        moved = run_with(lm, [Edit(site, "add", 0.5, positions=[5])], ids)
        assert torch.equal(moved[:, :5], base[:, :5]) and not torch.equal(moved[:, 5], base[:, 5]), site
    # a run patched into itself: every residual replaced by its own value
    res = capture_residuals(lm, ids[:1], embed=True)
    edits = [Edit(site, "replace", h.reshape(1, 6, -1)) for site, h in zip(res.sites, res.hidden)]
    # against the same one-row run: a batch of two may take another GEMM kernel (other rounding)
    assert torch.equal(run_with(lm, edits, ids[:1]), _logits(lm, ids[:1]))


def _hand_hook(lm, site, value, row, pos):
    """A float64 forward hook written directly on the module a site names: replace at (row, pos)."""
    kind, *idx = site.split(".")
    i = int(idx[0]) if idx else 0
    parts = block_parts(lm, heads=True, neurons=False)[i]

    def put(h):
        h = h.clone()
        h[row, pos] = value
        return h

    if kind == "resid":
        return lm.layers[i].register_forward_hook(lambda m, a, out: put(out) if torch.is_tensor(out) else (put(out[0]), *out[1:]))
    if kind == "attn":
        mod = parts.attn_post_norm or parts.attn
        return mod.register_forward_hook(lambda m, a, out: put(out) if torch.is_tensor(out) else (put(out[0]), *out[1:]))
    if kind == "head":
        h = int(idx[1])

        def pre(m, args):
            z = args[0].clone()
            d_head = z.shape[-1] // lm.model.config.num_attention_heads
            z[row, pos, h * d_head:(h + 1) * d_head] = value
            return (z,)
        return parts.attn_out.register_forward_pre_hook(pre)
    raise AssertionError(site)


@pytest.mark.parametrize("arch", ARCHS)
def test_edits_equal_a_hand_written_float64_hook(arch):
    lm = LensModel.from_hf(tiny_model(arch).double())
    ids = random_batch(3, 5)
    for site, width in (("resid.1", lm.d_model), ("attn.0", lm.d_model), ("head.2.1", lm.d_model // 4)):
        value = torch.randn(width, dtype=torch.float64)
        handle = _hand_hook(lm, site, value, 1, 3)
        want = _logits(lm, ids)
        handle.remove()
        got = run_with(lm, [Edit(site, "replace", value, rows=[1], positions=[3])], ids)
        assert torch.allclose(got, want, rtol=0, atol=1e-12), (arch, site)


def test_per_row_edits_in_one_batch_equal_one_row_at_a_time():
    lm = LensModel.from_hf(tiny_model("qwen2").double())
    ids = random_batch(1, 7).expand(4, -1)
    values = torch.randn(4, lm.d_model, dtype=torch.float64)
    edits = [Edit("resid.0", "replace", values[j], rows=[j], positions=[j + 1]) for j in range(4)]
    together = run_with(lm, edits, ids)
    for j in range(4):
        alone = run_with(lm, [Edit("resid.0", "replace", values[j], positions=[j + 1])], ids[:1])
        assert torch.allclose(together[j], alone[0], atol=1e-12)


def test_reading_sees_the_written_state():
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = random_batch(1, 4)
    value = torch.randn(lm.d_model)
    with Intervention(lm, [Edit("attn.1", "replace", value, positions=[2])]):
        comp, _ = ComponentCapture(lm, heads=False).run(ids)
    assert torch.equal(comp.attn[1, 2], value)


def test_bad_edits():
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = random_batch(1, 4)
    for edit, match in ((Edit("resid.9", "add", 1.0), r"layer 9 out of range \[0, 3\)"),
                        (Edit("head.1.4", "add", 1.0), r"head 4 out of range \[0, 4\)"),
                        (Edit("blocks.1", "add", 1.0), "site: unknown 'blocks.1'"),
                        (Edit("resid.1", "swap", 1.0), "op 'swap' is not one of"),
                        (Edit("resid.1", "apply", 2.0), "op 'apply' needs a function")):
        with pytest.raises(ValueError, match=match):
            Intervention(lm, [edit])
    with pytest.raises(ValueError, match=r"positions \[4\] out of range for 4 positions"):
        run_with(lm, [Edit("resid.1", "add", 1.0, positions=[4])], ids)
    with pytest.raises(ValueError, match=r"rows \[1\] out of range for a batch of 1"):
        run_with(lm, [Edit("resid.1", "add", 1.0, rows=[1])], ids)
    with pytest.raises(ValueError, match="the function returned"):
        run_with(lm, [Edit("resid.1", "apply", lambda h: h[..., :3])], ids)
    neox = LensModel.from_hf(tiny_model("gpt_neox", use_parallel_residual=True))
    with pytest.raises(ValueError, match="no mid-layer residual"):
        Intervention(neox, [Edit("mid.0", "add", 1.0)])
