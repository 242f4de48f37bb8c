"""The model adapter: decode(last pre-norm residual) must be the model's own logits."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fusedlens import AdapterError, LensModel, ResidualCapture
from tiny_models import ARCHS, EXPECTED, GEMMA_SOFTCAP, VOCAB, random_batch, tiny_model

ATOL = 1e-5


@pytest.fixture(scope="module", params=ARCHS)
def arch_lm(request):
    return request.param, LensModel.from_hf(tiny_model(request.param))


def last_residual(lm, ids, mask=None):
    """resid.{L-1} of the real positions, via the capture (pre final norm)."""
    res = ResidualCapture(lm, layers=[lm.n_layers - 1], embed=False).run(ids, mask)
    assert res.sites == [f"resid.{lm.n_layers - 1}"]
    return res.hidden[0]


@torch.no_grad()
def test_decode_matches_model_logits(arch_lm):
    arch, lm = arch_lm
    ids = random_batch(3, 9)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # one right-padded row: only real positions are compared
    logits = lm.model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    got = lm.decode(last_residual(lm, ids, mask))
    assert got.shape == (int(mask.sum()), VOCAB)
    torch.testing.assert_close(got, logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_we_hand_out_the_pre_norm_residual(arch_lm):
    # HF's last hidden_states entry is post-norm for all these archs; ours must not be.
    arch, lm = arch_lm
    ids = random_batch(2, 6)
    out = lm.model(input_ids=ids, output_hidden_states=True)
    hf_last = out.hidden_states[-1].flatten(0, 1)
    ours = last_residual(lm, ids)
    assert (ours - hf_last).abs().max() > 1e-2
    # ... and the final norm applied to ours is exactly HF's normed state.
    torch.testing.assert_close(lm.norm(ours), hf_last, atol=ATOL, rtol=0)


def test_norm_kind_and_tying(arch_lm):
    arch, lm = arch_lm
    kind, offset, tied = EXPECTED[arch]
    assert lm.norm.kind == kind
    assert lm.norm.weight_offset == offset
    assert (lm.norm.bias is not None) == (kind == "layernorm")
    info = lm.describe()
    assert info["unembed"] == ("tied" if tied else "untied")
    assert info["n_layers"] == 3 and info["vocab_size"] == VOCAB
    assert lm.unembed.softcap == (GEMMA_SOFTCAP if arch == "gemma2" else None)
    assert info["softcap"] == lm.unembed.softcap


@torch.no_grad()
def test_gemma2_softcap_bites():
    lm = LensModel.from_hf(tiny_model("gemma2"))
    ids = random_batch(2, 8)
    logits = lm.model(input_ids=ids).logits.flatten(0, 1)
    h = last_residual(lm, ids)
    raw = lm.norm(h) @ lm.unembed.weight.T
    assert logits.abs().max() < GEMMA_SOFTCAP
    assert raw.abs().max() > GEMMA_SOFTCAP  # otherwise the test below proves nothing
    torch.testing.assert_close(lm.decode(h), logits, atol=ATOL, rtol=0)
    assert (lm.decode(h) - raw).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@torch.no_grad()
def test_untied_head_with_bias(arch):
    model = tiny_model(arch, lm_head_bias=True)
    lm = LensModel.from_hf(model)
    assert lm.unembed.bias is not None
    assert lm.describe()["unembed"] == "untied, with bias"
    ids = random_batch(2, 7)
    torch.testing.assert_close(lm.decode(last_residual(lm, ids)), model(input_ids=ids).logits.flatten(0, 1),
                               atol=ATOL, rtol=0)


# --- an architecture the adapter has never seen -------------------------------------------

class Scale(nn.Module):
    """A LayerNorm under a class name the fallback search does not recognise."""

    def __init__(self, d):
        super().__init__()
        self.eps = 1e-5
        self.weight = nn.Parameter(1 + 0.3 * torch.randn(d))
        self.bias = nn.Parameter(0.3 * torch.randn(d))

    def forward(self, x):
        return nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.pre = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.fc(self.pre(x)))


class Weird(nn.Module):
    def __init__(self, vocab=37, d=16, n=2):
        super().__init__()
        self.config = SimpleNamespace(depth=n)  # no num_hidden_layers: no length hint either
        self.tok = nn.Embedding(vocab, d)
        self.stack = nn.ModuleList(Block(d) for _ in range(n))
        self.out_scale = Scale(d)
        self.readout = nn.Linear(d, vocab, bias=True)

    def forward(self, input_ids, attention_mask=None, **_):
        x = self.tok(input_ids)
        for b in self.stack:
            x = b(x)
        return SimpleNamespace(logits=self.readout(self.out_scale(x)))


@torch.no_grad()
def test_unknown_architecture_needs_paths():
    model = Weird().eval()
    with pytest.raises(AdapterError, match=r"decoder layers.*layers='dotted.path'"):
        LensModel.from_hf(model)
    with pytest.raises(AdapterError, match=r"final norm.*final_norm='dotted.path'"):
        LensModel.from_hf(model, layers="stack")
    with pytest.raises(AdapterError, match=r"unembedding.*unembed='dotted.path'"):
        LensModel.from_hf(model, layers="stack", final_norm="out_scale")
    with pytest.raises(AdapterError, match=r"no module at 'stack.nope'"):
        LensModel.from_hf(model, layers="stack.nope")
    assert issubclass(AdapterError, ValueError)

    lm = LensModel.from_hf(model, layers="stack", final_norm="out_scale", unembed="readout")
    assert lm.n_layers == 2 and lm.norm.kind == "layernorm" and lm.unembed.bias is not None
    assert lm.describe()["unembed"] == "untied, with bias"
    ids = torch.randint(0, 37, (2, 5))
    h = ResidualCapture(lm, embed=False).run(ids).hidden[-1]
    torch.testing.assert_close(lm.decode(h), model(ids).logits.flatten(0, 1), atol=ATOL, rtol=0)


def test_not_a_model():
    with pytest.raises(AdapterError, match="PreTrainedModel"):
        LensModel.from_hf(nn.Linear(2, 2))


# --- the real model -----------------------------------------------------------------------

@torch.no_grad()
def test_real_model_decode(real_lm):
    lm = real_lm
    assert lm.n_layers == 30 and lm.vocab_size == 49152
    assert lm.norm.kind == "rmsnorm" and lm.norm.weight_offset == 0
    assert lm.describe()["unembed"] == "tied"
    ids = lm.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    assert ids.shape[1] > 5
    logits = lm.model(input_ids=ids).logits[0]
    got = lm.decode(last_residual(lm, ids))
    torch.testing.assert_close(got, logits, atol=1e-4, rtol=0)
    assert lm.tokenizer.decode(int(got[-1].argmax())).strip() == lm.tokenizer.decode(int(logits[-1].argmax())).strip()


@pytest.mark.parametrize("path", ["/nonexistent", "./no/such/model", "missing.gguf", "a/b/c"])
def test_missing_local_model_is_named(path):
    # 0.1 handed such paths to the hub client: an HFValidationError traceback
    from fusedlens.core.models import load_model

    with pytest.raises(ValueError, match=rf"model: {path} does not exist"):
        load_model(path)
