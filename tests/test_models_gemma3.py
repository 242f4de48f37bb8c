"""Gemma 3 270M (vocabulary 262,144), the second real model, against float64 on its real weights.

A few dozen to a few hundred tokens per check: the lens statistics of all 19 sites against a float64
lens written here from the HF model's own block outputs; token-set mass; the DLA decomposition
(blocks to a float64 copy's logits, heads to their block); a run patched into itself and a zero
steering vector, bit for bit; probe R² against a float64 ridge on the same rows. The tiny random
Gemma 3 of tiny_models covers the same code on every suite; this is the real thing."""
import copy
import os

import numpy as np
import pytest
import torch

from fusedlens import direct_logit_attribution, ops
from fusedlens.core.capture import capture_residuals
from fusedlens.data.pydoc import pydoc_text
from fusedlens.intervene import Edit, run_with
from fusedlens.probe import fit_probes
from fusedlens.steer import steer_edit
from ridge_bounds import fp32_gram_r2_bound
from test_probe_fit import HELD, TRAIN, SEQ, materialise, r2_of_ridge

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def ids(gemma_lm):
    return gemma_lm.tokenizer(pydoc_text()[:2000], return_tensors="pt").input_ids[:, :32]


@torch.no_grad()
def _hand_lens_logits(lm, ids):
    """float64 logits [19, tokens, vocab] of every site: the HF model's hidden states (block inputs, the
    last block's output by a hook, since HF returns that one normalised), Gemma's RMSNorm written out
    (x / rms · (1 + w)) and the tied embedding as the head."""
    model = lm.model
    last = {}
    handle = model.model.layers[-1].register_forward_hook(lambda m, a, out: last.setdefault("h", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    handle.remove()
    hidden = torch.stack([*out.hidden_states[:-1], last["h"]])[:, 0].double()  # embed (scaled by √d), resid.0..17
    w = model.model.norm.weight.double()
    eps = model.config.rms_norm_eps
    normed = hidden / torch.sqrt(hidden.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)
    logits = normed @ model.get_output_embeddings().weight.double().T
    return logits, out.logits[0].double()


def test_it_is_the_model_the_issue_describes(gemma_lm):
    d = gemma_lm.describe()
    assert (d["model"], d["n_layers"], d["d_model"], d["vocab_size"]) == ("Gemma3ForCausalLM", 18, 640, 262144)
    assert d["unembed"] == "tied" and d["softcap"] is None and d["final_norm"].startswith("rmsnorm (1 + weight)")


def test_the_float32_copy_is_the_gguf_bit_for_bit(gemma_lm, gemma_source):
    """The cached float32 folder against the GGUF dequantised by transformers: every weight, the config's
    numbers and the tokenizer on real text (whichever of the two this session did not load, is loaded)."""
    from fusedlens import load_model
    from fusedlens.core.model_files import converted_folder, gguf_file

    other = load_model(converted_folder("gemma-3-270m") if gemma_source == "gguf"
                       else os.path.join(*gguf_file("gemma-3-270m")))
    a, b = gemma_lm.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    skip = {"_name_or_path", "quantization_config"}
    ca, cb = gemma_lm.model.config.to_dict(), other.model.config.to_dict()
    assert {k: v for k, v in ca.items() if k not in skip} == {k: v for k, v in cb.items() if k not in skip}
    text = pydoc_text()[:20000]
    assert gemma_lm.tokenizer(text).input_ids == other.tokenizer(text).input_ids
    assert other.describe()["unembed"] == "tied"


def test_lens_statistics_match_float64(gemma_lm, ids):
    lm = gemma_lm
    res = capture_residuals(lm, ids)
    assert res.sites == ["embed"] + [f"resid.{i}" for i in range(18)]
    sets = torch.full((lm.vocab_size,), -1, dtype=torch.int64)
    sets[torch.randperm(lm.vocab_size)[:5000]] = 0  # a sparse set and a dense one
    sets[torch.randperm(lm.vocab_size)[:131072]] = 1
    got = ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, k=5, token_sets=sets)
    logits, model_logits = _hand_lens_logits(lm, ids)
    assert float((logits[-1] - model_logits).abs().max()) < 1e-3  # the hand-written lens is the model's head
    want = ops.reference.stats_from_logits(logits, res.targets, k=5, token_sets=sets)
    for name in ("kl_to_final", "entropy", "target_logprob", "lse"):
        g, w = getattr(got, name).double(), getattr(want, name)
        keep = ~torch.isnan(w)
        assert bool(((g - w).abs()[keep] <= 3e-5 * (1 + w.abs()[keep])).all()), (name, float((g - w).abs()[keep].max()))
    assert float((got.set_mass.double() - want.set_mass).abs().max()) < 3e-5  # as the log-probs: a share of Δz
    # top-1, ranks and depth exact where float32 rounding cannot swap near-tied logits among 262k
    gap = want.topk_logits[..., 0] - want.topk_logits[..., 1]
    clear = gap > 1e-3
    assert clear.float().mean() > 0.95 and torch.equal(got.top1[clear], want.top1[clear])
    z_t = logits.gather(-1, res.targets.clamp_min(0).expand(19, -1)[..., None])
    near = ((logits - z_t).abs() < 1e-3).sum(-1) - 1  # logits within 1e-3 of the target's (itself excluded)
    keep = res.targets >= 0
    assert bool(((got.target_rank - want.target_rank).abs() <= near)[:, keep].all())
    all_clear = clear.all(0)
    assert torch.equal(got.prediction_depth[all_clear], want.prediction_depth[all_clear])


def test_dla_sums_to_a_float64_copy_and_prefers_the_indirect_object(gemma_lm):
    r = direct_logit_attribution(gemma_lm, IOI, ("attn", "mlp", "head"), answer=" Mary", counterfactual=" John")
    err = r.decomposition_error("diff")
    assert err["blocks"] < 2e-5 and err["heads"] < 2e-5, err
    m64 = copy.deepcopy(gemma_lm.model).double()
    ids = gemma_lm.tokenizer(IOI, return_tensors="pt").input_ids
    with torch.no_grad():
        z = m64(input_ids=ids, use_cache=False).logits[0, -1]
    a, b = (gemma_lm.tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    block = [r.index(n) for n in r.components if n == "embed" or n == "bias" or n.split(".")[0] in ("attn", "mlp")]
    row = r.rows_of("diff")[-1]
    got = float(r.contrib["diff"][block][:, row].double().sum())
    assert abs(got - float(z[a] - z[b])) < 2e-5 * max(1.0, abs(float(z[a] - z[b])))
    assert float(z[a] - z[b]) > 0  # the model prefers the indirect object


def test_a_run_patched_into_itself_and_a_zero_steering_vector_are_bit_identical(gemma_lm, ids):
    lm = gemma_lm
    with torch.no_grad():
        base = lm.model(input_ids=ids, use_cache=False).logits
    res = capture_residuals(lm, ids)
    edits = [Edit(site, "replace", h.reshape(1, ids.shape[1], -1)) for site, h in zip(res.sites, res.hidden)]
    assert torch.equal(run_with(lm, edits, ids), base)
    v = torch.randn(lm.d_model)
    for site in ("embed", "resid.3", "mid.9", "resid.17"):
        assert torch.equal(run_with(lm, [steer_edit(lm, v, site, 0.0)], ids), base), site


def test_probe_r2_matches_a_float64_ridge(gemma_lm):
    lm = gemma_lm
    ids = lm.tokenizer(pydoc_text()[:6000], return_tensors="pt").input_ids[0, :TRAIN + HELD + 1]
    result = fit_probes(lm, ids, train_tokens=TRAIN, heldout_tokens=HELD, seq_len=SEQ, layers=[5, 17],
                        targets=("logit", "logprob", "entropy", "loss"), folds=2, alphas=[1.0], progress=False)
    (X, Y), (Xh, Yh) = materialise(lm, ids)
    index = {"embed": 0, "resid.5": 6, "resid.17": 18}
    for s, fits in zip(result.sites, result.fits):
        x, xh = X[index[s]], Xh[index[s]]
        r2_train, r2_held = r2_of_ridge(x, Y[:, :4], xh, Yh[:, :4], 1.0)
        _, _, tol_train, tol_held = fp32_gram_r2_bound(x, Y[:, :4], xh, Yh[:, :4], 1.0, TRAIN)
        for j, fit in enumerate(fits):
            assert abs(fit["r2_train"] - r2_train[j]) <= tol_train[j], (s, j)
            assert abs(fit["r2_heldout"] - r2_held[j]) <= tol_held[j], (s, j)
    assert np.isfinite([f["r2_heldout"] for fits in result.fits for f in fits]).all()


def test_the_tuned_lens_on_19_sites(gemma_lm, ids):
    """At its identity init the tuned lens reads exactly as the logit lens on all 19 sites, and the loss it
    trains on, the fused KL to the final layer over 262k logits, has the float64 autograd value and
    gradient on Gemma's own residuals."""
    from fusedlens import Unembed
    from fusedlens.ops.lens_kl import lens_kl, reference_lens_kl
    from fusedlens.tuned.lens import TunedLens

    lm = gemma_lm
    lens = TunedLens.from_model(lm)
    res = capture_residuals(lm, ids)
    assert len(lens.sites) == 18 and lens.sites[0] == "embed"  # the translators; the final site is the model's
    got = lens.lens_stats(res.hidden, res.targets, k=1)
    want = ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, k=1)
    assert torch.equal(got.kl_to_final, want.kl_to_final) and torch.equal(got.top1, want.top1)
    hidden = res.hidden[[0, 6, 12, 17], :6]
    final = res.hidden[-1, :6]
    upstream = torch.rand(hidden.shape[:2]) + 0.5

    def grad(dtype, run):
        h = hidden.to(dtype).requires_grad_(True)
        kl = run(lm.norm(h), lm.norm(final.to(dtype)))
        (g,) = torch.autograd.grad((kl * upstream.to(dtype)).sum(), h)
        return kl.detach(), g

    want_kl, want_g = grad(torch.float64, lambda x, f: reference_lens_kl(x, f, Unembed(lm.unembed.weight.double())).kl)
    got_kl, got_g = grad(torch.float32, lambda x, f: lens_kl(x, f, lm.unembed, backend="cpu", compute="fp32").kl)
    assert bool(((got_kl.double() - want_kl).abs() <= 1e-4 + 1e-5 * want_kl.abs()).all())
    assert float((got_g.double() - want_g).norm() / want_g.norm()) < 1e-5


def test_the_demo_names_the_model(gemma_lm, tmp_path):
    import json

    from fusedlens.cli.demo import run_demo

    rows = run_demo(n_tokens=48, seq_len=24, out_dir=str(tmp_path / "demo"), lm=gemma_lm, quiet=True,
                    model="gemma-3-270m")
    assert [r["site"] for r in rows][-1] == "resid.17" and len(rows) == 19
    saved = json.load(open(tmp_path / "demo" / "demo.json"))
    assert saved["model"]["vocab_size"] == 262144 and saved["tokens"] == 48
