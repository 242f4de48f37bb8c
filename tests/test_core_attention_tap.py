"""core.attention_tap: the recorded queries and keys give the model's own attention weights on every
family; an identity edit changes no logit; a real edit equals the same edit made by hand inside the
attention function; the attention functions are restored on exit, also after an error."""
import random

import pytest
import torch

from fusedlens.core.attention_tap import AttentionTap, additive_mask, scores
from fusedlens.core.models import LensModel
from tiny_models import ARCHS, tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()


def tiny_lm(arch):
    return LensModel.from_hf(tiny_model(arch, seed=random.randint(0, 10_000)).double(), TOK)


def logits(lm, text):
    return lm.model(input_ids=torch.tensor(TOK(text)["input_ids"])[None], use_cache=False).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_calls_reproduce_the_attention_weights(arch):
    lm = tiny_lm(arch)
    with torch.no_grad(), AttentionTap(lm) as tap:
        base = logits(lm, "abcdefgh")
    assert sorted(tap.calls) == list(range(lm.n_layers))
    for layer, call in tap.calls.items():
        a = torch.softmax(scores(call) + additive_mask(call), -1)
        # eager attention takes its softmax in float32 even for a float64 model
        torch.testing.assert_close(a, call.weights.double(), rtol=0, atol=1e-6, msg=f"{arch} {layer}")
    with torch.no_grad(), AttentionTap(lm, lambda i, q, k, v: (q, k, v), keep=False):
        assert torch.equal(logits(lm, "abcdefgh"), base)


def test_an_edit_lands_in_the_attention_and_the_functions_come_back():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    lm = tiny_lm("llama")
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)

    def zero_values(layer, q, k, v):
        return q, k, (v * 0 if layer == 1 else v)

    with torch.no_grad(), AttentionTap(lm, zero_values) as tap:
        got = logits(lm, "abcdef")
    assert not bool(tap.calls[1].out.any())  # values zeroed: the attention output is zero
    with torch.no_grad():  # the same by hand: block 1's attention output (before o_proj) is zero
        handle = lm.layers[1].self_attn.o_proj.register_forward_pre_hook(lambda m, a: (a[0] * 0,))
        try:
            want = logits(lm, "abcdef")
        finally:
            handle.remove()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before

    def broken(layer, q, k, v):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), AttentionTap(lm, broken):
        logits(lm, "abc")
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before
