"""core.components: the parts captured in one forward add up, on tiny random models of every family.

In float64 (the model cast to double) embed + Σ attn + Σ mlp equals the final residual to rounding;
heads plus the projection bias equal the attention output, and neurons plus the down-projection
bias the MLP output (Gemma 2's norms compute in float32 internally, hence its looser bound). Each
head is also recomputed through the projection module itself with every other head zeroed, so a
wrong weight layout (GPT-2's Conv1D is [in, out]) cannot cancel out.
"""
import pytest
import torch
from torch import nn

from fusedlens.core.models import AdapterError, LensModel
from fusedlens.core.components import ComponentCapture, Frozen
from fusedlens.core.structure import block_parts
from tiny_models import ARCHS, random_batch, tiny_model

# Gemma 2 and 3 run in float32: their RMSNorm computes in float32 whatever the model's dtype, and in
# float64 HF's padding mask turns Gemma 2's padded batches to NaN.
GEMMA = ("gemma2", "gemma3")
TOL = {arch: 2e-6 for arch in GEMMA}


def _model(arch):
    model = tiny_model(arch)
    return LensModel.from_hf(model if arch in GEMMA else model.double())


def _batch():
    ids = random_batch(3, 9)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    mask[2, 1:] = 0  # a one-token prompt
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_parts_add_up(arch):
    lm = _model(arch)
    ids, mask = _batch()
    c, _ = ComponentCapture(lm, heads=True, neurons=True).run(ids, mask)
    rows = int(mask.sum())
    assert c.final.shape == (rows, lm.d_model) and c.attn.shape == (lm.n_layers, rows, lm.d_model)
    scale = c.final.abs().max()
    tol = TOL.get(arch, 1e-12)
    assert float((c.embed + c.attn.sum(0) + c.mlp.sum(0) - c.final).abs().max() / scale) < tol
    assert float((c.heads().sum(1) + c.attn_bias - c.attn).abs().max() / c.attn.abs().max()) < tol
    for i, down in enumerate(c.down):
        out = c.neuron_acts[i] @ down
        out = out if c.mlp_post[i] is None else c.mlp_post[i](out)
        assert float((out + c.mlp_bias[i] - c.mlp[i]).abs().max() / c.mlp[i].abs().max()) < tol
    # effects read through the projections equal the built vectors' dot products
    rho = torch.randn(rows, lm.d_model, dtype=c.final.dtype)
    assert torch.allclose(c.head_effects(rho), (c.heads() * rho).sum(-1), atol=1e-5 if arch in GEMMA else 1e-10)
    vecs = torch.stack([torch.einsum("nf,fd->fnd", c.neuron_acts[i], c.down[i]) for i in range(lm.n_layers)])
    vecs = torch.stack([v if c.mlp_post[i] is None else c.mlp_post[i](v) for i, v in enumerate(vecs)])
    assert torch.allclose(c.neuron_effects(rho), (vecs * rho).sum(-1), atol=1e-5 if arch in GEMMA else 1e-10)
    # padding changes nothing: prompt 1 alone gives the same rows
    alone, _ = ComponentCapture(lm, heads=True).run(ids[1:2, :5])
    sel = slice(9, 14)
    # HF's eager attention takes its softmax in float32 even in a float64 model: a padded batch and the
    # prompt alone (whose float64 logits a CPU's GEMM may round differently by shape) can differ by
    # float32 rounding of the weights, ~1e-7 of the values; 2e-6 of the largest is that with room
    atol = lambda full: 1e-5 if arch in GEMMA else 2e-6 * float(full.abs().max())  # noqa: E731
    assert torch.allclose(alone.heads(), c.heads()[:, :, sel], atol=atol(c.heads()))
    assert torch.allclose(alone.mlp, c.mlp[:, sel], atol=atol(c.mlp))


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_through_the_projection_module(arch):
    lm = _model(arch)
    ids = random_batch(1, 6)
    cap = ComponentCapture(lm, heads=True)
    c, _ = cap.run(ids)
    layer = lm.n_layers - 1
    part = cap.parts[layer]
    z = {}
    h = part.attn_out.register_forward_pre_hook(lambda _m, a: z.__setitem__("z", a[0].detach()))
    with torch.no_grad():
        lm.model(input_ids=ids)
    h.remove()
    zz = z["z"].reshape(-1, z["z"].shape[-1])
    H = cap.n_heads
    dh = zz.shape[-1] // H
    zero = part.attn_out(torch.zeros_like(zz))  # the projection's bias alone
    post = cap.post[layer][0]
    frozen = None if post is None else Frozen.of(post, part.attn_out(zz))
    for head in range(H):
        only = torch.zeros_like(zz)
        only[:, head * dh:(head + 1) * dh] = zz[:, head * dh:(head + 1) * dh]
        want = part.attn_out(only) - zero
        want = want if frozen is None else frozen(want)
        assert torch.allclose(c.heads([layer])[0, head], want, atol=1e-5 if arch in GEMMA else 1e-10), (arch, head)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_source_decomposition_sums_to_the_head(arch):
    """A_h(t, s) · v_h(s) W_O^h over the sources s of a head adds up to that head's output at t (grouped-query
    heads share their value vectors; GPT-2, GPT-NeoX and Phi-3 cut them out of a fused projection)."""
    lm = _model(arch)
    ids, mask = _batch()
    cap = ComponentCapture(lm, sources=[(1, 3), (2, 0)])
    c, _ = cap.run(ids, mask)
    rho = torch.randn(c.final.shape, dtype=c.final.dtype)
    effects = c.head_effects(rho)
    atol = 1e-5 if arch in GEMMA else 1e-10
    for layer, head in ((1, 3), (2, 0)):
        per_source = c.source_effects(layer, head, rho)
        assert per_source.shape == (c.final.shape[0], ids.shape[1])
        assert torch.allclose(per_source.sum(1), effects[layer, head], atol=atol), (arch, layer, head)
        assert float(per_source[9:14, 5:].abs().max()) == 0  # prompt 1 has 5 tokens: no source beyond


def test_sliding_window_layers_have_no_source_outside_the_window():
    """Gemma 3's sliding layers (the tiny model: window 4 in blocks 0 and 1, block 2 global): a head of a
    sliding block takes nothing from sources more than 3 tokens back; the global block's head does."""
    lm = _model("gemma3")
    ids = random_batch(1, 9)
    c, _ = ComponentCapture(lm, sources=[(1, 3), (2, 0)]).run(ids)
    rho = torch.randn(c.final.shape, dtype=c.final.dtype)
    t, s = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    far = t - s >= 4
    sliding, full = c.source_effects(1, 3, rho), c.source_effects(2, 0, rho)
    assert float(sliding[far].abs().max()) == 0 and float(full[far].abs().min()) > 0
    effects = c.head_effects(rho)
    assert torch.allclose(sliding.sum(1), effects[1, 3], atol=1e-5)


def test_a_head_without_value_projection_is_named():
    lm = _model("llama")
    attn = lm.layers[0].self_attn
    attn.values = attn.v_proj  # the forward is never run: only the lookup is under test
    del attn.v_proj
    with pytest.raises(AdapterError, match=r"block 0 \(LlamaDecoderLayer\): no value projection"):
        ComponentCapture(lm, sources=[(0, 0)])


class _Wrapped(nn.Module):
    """An MLP inside a wrapper: the table's mlp.down_proj path finds nothing."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_unsupported_layout_is_named_and_can_be_overridden():
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp = _Wrapped(block.mlp)
    lm = LensModel.from_hf(model)
    with pytest.raises(AdapterError, match=r"block 0 \(LlamaDecoderLayer\): no mlp_down module .*parts="):
        ComponentCapture(lm, neurons=True)
    ComponentCapture(lm, heads=True)  # the down projection is needed for neurons only
    override = {"mlp_down": "mlp.inner.down_proj"}
    parts = block_parts(lm, override)
    assert parts[0].mlp_down is model.model.layers[0].mlp.inner.down_proj
    c, _ = ComponentCapture(lm, neurons=True, parts=override).run(random_batch(1, 5))
    assert torch.allclose(c.embed + c.attn.sum(0) + c.mlp.sum(0), c.final, atol=1e-5)
    assert torch.allclose(sum(c.neuron_acts[i] @ c.down[i] for i in range(lm.n_layers)), c.mlp.sum(0), atol=1e-5)
    with pytest.raises(ValueError, match="parts: unknown part"):
        block_parts(lm, {"feedforward": "ffn"})
    named = LensModel.from_hf(model, parts=override)  # named once with the model: every reader sees it
    assert block_parts(named)[1].mlp_down is model.model.layers[1].mlp.inner.down_proj
    c2, _ = ComponentCapture(named, neurons=True).run(random_batch(1, 5))
    assert torch.allclose(sum(c2.neuron_acts[i] @ c2.down[i] for i in range(lm.n_layers)), c2.mlp.sum(0), atol=1e-5)
