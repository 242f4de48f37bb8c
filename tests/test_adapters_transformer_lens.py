"""fusedlens.adapters.transformer_lens: a TransformerLens model decodes like the HF model it was made from.

Each TransformerLens model is built offline from a tiny random HF model of a family, and from
SmolLM2: a TransformerBridge (its raw forward; enable_compatibility_mode with no processing, with
the default processing, and with refactor_factored_attn_matrices where the model allows it) and,
where TransformerLens < 4 still has it, a HookedTransformer (processing off and at the defaults
of from_pretrained). Its statistics, through adapters.transformer_lens.lens_model + capture and through
run_with_cache, must equal the float64 reference of the HF model (hf_oracle.py), centred over
the vocabulary where center_unembed centred the unembedding.
"""
import copy
import importlib.util
import pathlib
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fusedlens import AdapterError, LensModel, LogitLens, capture_residuals
from fusedlens.adapters.transformer_lens import is_centred, lens_model, residuals_from_cache
from hf_oracle import K, Oracle, fresh_ids, right_padded
from tiny_models import ARCHS, VOCAB, tiny_model, tiny_tokenizer

transformer_lens = pytest.importorskip("transformer_lens")  # (conftest.py turns the hub off)

try:
    from transformer_lens import HookedTransformer  # removed in TransformerLens 4.0
except ImportError:
    HookedTransformer = None
needs_hooked = pytest.mark.skipif(HookedTransformer is None, reason="TransformerLens >= 4 has no HookedTransformer "
                                                                    "(make test-tl3 runs these under 3.9)")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "transformer_lens_lens.py"
ROTARY = {"gpt_neox", "llama", "mistral", "qwen2", "gemma2", "gemma3", "phi3"}  # refactor_factored_attn_matrices refuses these
PROCESSING = {"raw": None, "none": dict(no_processing=True), "default": {},
              "refactor": dict(refactor_factored_attn_matrices=True)}
REFACTOR_FACTOR = 32  # its float32 SVD refactoring rounds more than the forward does: measured up to 5.4x


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny tokenizer saved and reloaded: TransformerLens re-reads a tokenizer from its name_or_path."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    tiny_tokenizer().save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def bridge(hf_model, tokenizer, processing: str, name: str = "tiny"):
    """A TransformerBridge over a copy of hf_model (the bridge rewires the module tree it is given)."""
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(name, hf_model=copy.deepcopy(hf_model), tokenizer=tokenizer,
                                                device="cpu")
    if PROCESSING[processing] is not None:
        model.enable_compatibility_mode(disable_warnings=True, **PROCESSING[processing])
    return model


def hooked_config(hf_model, folder):
    """HookedTransformer's config of a local HF model (TransformerLens < 4; Gemma 2 by hand: it
    derives Gemma's config from the official name only)."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    c = hf_model.config
    if c.model_type == "gemma2":
        return HookedTransformerConfig(
            d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
            act_fn="gelu_pytorch_tanh", normalization_type="RMS", rotary_base=10000.0, rotary_dim=c.head_dim,
            positional_embedding_type="rotary", use_attn_scale=True, n_key_value_heads=c.num_key_value_heads,
            window_size=c.sliding_window, use_local_attn=True,
            attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types],
            attn_scores_soft_cap=c.attn_logit_softcapping, output_logits_soft_cap=c.final_logit_softcapping,
            gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
            original_architecture="Gemma2ForCausalLM")
    hf = copy.deepcopy(c)
    hf.architectures, hf.n_ctx = [type(hf_model).__name__], c.max_position_embeddings  # GPT-2's config lost n_ctx
    hf.save_pretrained(folder)
    return HookedTransformerConfig(**loading.convert_hf_model_config(str(folder)))


def hooked(hf_model, tokenizer, processing: str, folder):
    """A HookedTransformer from a local HF model: processing "none" or "default" (from_pretrained's)."""
    from transformer_lens import loading_from_pretrained as loading

    cfg = hooked_config(hf_model, folder)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    on = processing == "default"
    model.load_and_process_state_dict(
        loading.get_pretrained_state_dict(str(folder), cfg, hf_model), fold_ln=on, center_writing_weights=on,
        center_unembed=on and not cfg.output_logits_soft_cap > 0, fold_value_biases=on)  # as from_pretrained does
    return model.eval()


def adapt(tl_model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = lens_model(tl_model)
    centred = [w for w in caught if "centred" in str(w.message)]
    assert len(centred) == lm.logits_centered  # the warning comes exactly when the logits are centred
    return lm


def tiny_oracle(hf_model):
    ids = fresh_ids(3, 9, VOCAB)
    return Oracle(hf_model, ids, right_padded(ids))


def check_routes(tl_model, oracle, *, factor=None):
    """Capture through the adapter and run_with_cache: both equal the HF float64 truth."""
    ids, mask, mid = oracle.ids, oracle.mask, oracle.mid
    lm = adapt(tl_model)
    res = capture_residuals(lm, ids, mask, mid=mid)
    assert res.sites == oracle.sites and torch.equal(res.targets, oracle.targets)
    oracle.check(res.hidden, lm, **({"factor": factor} if factor else {}))
    _, cache = tl_model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: "hook_resid" in n)
    cached = residuals_from_cache(cache, ids, mask, mid=mid)
    assert cached.sites == res.sites and torch.equal(cached.hidden, res.hidden)  # the same forward
    return lm, res


def expect_centred(lm, processing, softcap):
    assert lm.logits_centered == (processing in ("default", "refactor") and softcap is None)
    assert lm.describe()["unembed"].endswith("centred (logits minus their row mean)") == lm.logits_centered


# --- TransformerBridge ---------------------------------------------------------------------

# TransformerLens refuses to refactor the QK circuit of a rotary model: those pairs are not run.
BRIDGE_CASES = [(arch, processing) for processing in PROCESSING for arch in ARCHS
                if not (processing == "refactor" and arch in ROTARY)]


@pytest.mark.parametrize("arch, processing", BRIDGE_CASES)
@torch.no_grad()
def test_bridge_stats_equal_hf(arch, processing, tokenizer):
    hf_model = tiny_model(arch)
    tl_model = bridge(hf_model, tokenizer, processing, arch)
    oracle = tiny_oracle(hf_model)
    lm, res = check_routes(tl_model, oracle, factor=REFACTOR_FACTOR if processing == "refactor" else None)
    expect_centred(lm, processing, lm.unembed.softcap)
    assert lm.unembed.softcap == (hf_model.config.final_logit_softcapping if arch == "gemma2" else None)
    if processing in ("raw", "none"):  # unprocessed: the very residuals of the HF model
        torch.testing.assert_close(res.hidden, oracle.hidden32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padding_gives_the_rows_run_alone(side, tokenizer):
    lm = adapt(bridge(tiny_model("gpt2"), tokenizer, "default"))  # absolute positions: left padding must shift them
    a, b = fresh_ids(1, 9, VOCAB)[0], fresh_ids(1, 5, VOCAB)[0]
    ids, mask = torch.zeros(2, 9, dtype=torch.long), torch.zeros(2, 9, dtype=torch.long)
    ids[0], mask[0] = a, 1
    cols = slice(4, 9) if side == "left" else slice(0, 5)
    ids[1, cols], mask[1, cols] = b, 1
    alone = torch.cat([capture_residuals(lm, s[None], mid=True).hidden for s in (a, b)], 1)
    torch.testing.assert_close(capture_residuals(lm, ids, mask, mid=True).hidden, alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_logit_lens_and_corpus_run(tokenizer, corpus_file, tmp_path):
    from fusedlens.data.corpus import iter_sequences
    from fusedlens.job import RunConfig
    from fusedlens.job import run_corpus as run

    hf_model = tiny_model("llama")
    lm = adapt(bridge(hf_model, tokenizer, "default"))
    seqs = torch.stack([s.ids for s in iter_sequences(lm.tokenizer, [corpus_file], 32, stop=4)])
    got = LogitLens(lm, k=K, mid=True).run(seqs)
    oracle = Oracle(hf_model, seqs)
    assert got.sites == oracle.sites and torch.equal(got.targets, oracle.targets)
    oracle.check_stats(got.stats, lm)
    summary = run(RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=32, max_tokens=4 * 32, k=5, mid=True,
                            progress=False), lm=lm)
    assert summary["tokens"] == got.n_tokens
    for got_row, want_row in zip(summary["layers"], got.summary()):
        for key, value in want_row.items():
            assert got_row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (got_row["site"], key)


def test_example_on_smollm2_equals_hf(real_lm, capsys):
    """examples/transformer_lens_lens.py: SmolLM2 as a bridge with the default processing, through
    LogitLens (capture) and through a cache, against the float64 truth of the HF model."""
    spec = importlib.util.spec_from_file_location("transformer_lens_lens", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    got = example.main(real_lm)
    out = capsys.readouterr().out
    assert "next token after" in out and "ridge probes: " in out
    lm, res, first = got["lm"], got["residuals"], got["result"].sequence(0)
    assert lm.n_layers == 30 and lm.norm.kind == "rmsnorm" and lm.context_length == real_lm.context_length
    expect_centred(lm, "default", None)
    oracle = Oracle(real_lm.model, res.input_ids[None], mid=False)
    assert res.sites == oracle.sites == first.sites
    oracle.check_stats(got["stats"], lm)
    if torch.equal(first.input_ids, res.input_ids):  # the same prompt through LogitLens, if tokenized alike
        oracle.check_stats(first.stats, lm)


# --- HookedTransformer (TransformerLens < 4) -----------------------------------------------

@needs_hooked
@pytest.mark.parametrize("processing", ["none", "default"])
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gemma3"])  # HookedTransformer 3.9 has no Gemma 3
@torch.no_grad()
def test_hooked_transformer_stats_equal_hf(arch, processing, tokenizer, tmp_path):
    hf_model = tiny_model(arch)
    lm, _ = check_routes(hooked(hf_model, tokenizer, processing, tmp_path), tiny_oracle(hf_model))
    expect_centred(lm, processing, lm.unembed.softcap)
    assert (lm.unembed.softcap is not None) == (arch == "gemma2")


@needs_hooked
@torch.no_grad()
def test_smollm2_hooked_transformer(real_lm, tmp_path):
    ids = fresh_ids(2, 8, real_lm.vocab_size)  # block outputs only: the float64 logits of 31 sites are 0.2 GB
    oracle = Oracle(real_lm.model, ids, right_padded(ids), mid=False)
    lm, _ = check_routes(hooked(real_lm.model, copy.deepcopy(real_lm.tokenizer), "default", tmp_path), oracle)
    expect_centred(lm, "default", None)


# --- what the adapter refuses ---------------------------------------------------------------

class HookedTransformerLike(nn.Module):
    """Stands in for a HookedTransformer (the adapter goes by the class name) with a given final norm."""

    def __init__(self, ln_final: nn.Module | None, d=8, vocab=11):
        super().__init__()
        self.cfg = SimpleNamespace(d_model=d, n_layers=1, normalization_type=None if ln_final is None else "LN")
        self.blocks = nn.ModuleList([nn.Identity()])
        if ln_final is not None:
            self.ln_final = ln_final
        self.W_U = nn.Parameter(torch.randn(d, vocab))


HookedTransformerLike.__name__ = "HookedTransformer"


class Tanh(nn.Module):
    eps = 1e-5

    def forward(self, x):
        return torch.tanh(x)


@pytest.mark.parametrize("model, match", [
    (nn.Linear(2, 2), "expected a TransformerLens HookedTransformer or TransformerBridge, got Linear"),
    (tiny_model("llama"), "expected a TransformerLens HookedTransformer or TransformerBridge, got LlamaForCausalLM"),
    (HookedTransformerLike(None), "no final norm .*normalization_type=None"),
    (HookedTransformerLike(Tanh()), "final norm Tanh matches none of LayerNorm, RMSNorm"),
])
def test_bad_models_are_one_line_errors(model, match):
    with pytest.raises(AdapterError, match=match) as err:
        lens_model(model)
    assert "\n" not in str(err.value)


def test_cache_without_the_residual_stream():
    ids = fresh_ids(1, 5, VOCAB)
    with pytest.raises(ValueError, match="cache: no blocks.0.hook_resid_pre"):
        residuals_from_cache({"blocks.0.hook_resid_post": torch.randn(1, 5, 8)}, ids)
    with pytest.raises(ValueError, match="cache: no blocks.0.hook_resid_mid"):
        residuals_from_cache({"blocks.0.hook_resid_post": torch.randn(1, 5, 8)}, ids, embed=False, mid=True)


@pytest.mark.parametrize("vocab", [VOCAB, 49152])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_centring_is_recognised(vocab, dtype):
    w = torch.randn(vocab, 64) * 0.3
    centred = w - w.mean(0)
    assert not is_centred(w.to(dtype), None)
    assert is_centred(centred.to(dtype), None)  # rounded to the dtype after centring, as TransformerLens stores it
    b = torch.randn(vocab) + 0.5  # a bias with a mean (a zero-mean random one is centred up to 1/sqrt(vocab))
    assert not is_centred(centred.to(dtype), b.to(dtype)) and is_centred(centred.to(dtype), (b - b.mean()).to(dtype))
