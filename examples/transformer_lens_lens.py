"""Logit lens of a TransformerLens model: the embedded SmolLM2 as a TransformerBridge, offline.

    python examples/transformer_lens_lens.py

1. `lens_model(model)` (fusedlens.adapters.transformer_lens): LogitLens, capture_residuals and `fusedlens run`
   work on it as on an HF model (a HookedTransformer, TransformerLens <= 3.x, the same way).
2. Tensors you already have: a `run_with_cache` cache → `residuals_from_cache` →
   `ops.lens_stats`, `ops.lens_kl`, `RidgeAccumulator`.

The bridge runs with HookedTransformer's weight processing (enable_compatibility_mode():
fold_ln, center_writing_weights, center_unembed): log-probs, KL, entropy and ranks equal the HF
model's; center_unembed shifts each token's logits by their mean (lm.logits_centered, a warning).
"""
from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local

import torch

import fusedlens
from fusedlens import ops
from fusedlens.adapters.transformer_lens import lens_model, residuals_from_cache
from fusedlens.probe import RidgeAccumulator, fit_weights

PROMPTS = ["The capital of France is Paris, and the capital of Italy is", "Two plus two is"]


def main(hf_lm: fusedlens.LensModel | None = None) -> dict:
    from transformer_lens.model_bridge import TransformerBridge

    hf_lm = hf_lm or fusedlens.load_model()  # the embedded SmolLM2-135M-Instruct
    # The bridge rewires the HF module tree it is given: hand it a copy to keep the HF model as it was.
    model = TransformerBridge.boot_transformers("SmolLM2-135M-Instruct", hf_model=copy.deepcopy(hf_lm.model),
                                                tokenizer=copy.deepcopy(hf_lm.tokenizer), device="cpu")
    model.enable_compatibility_mode(disable_warnings=True)

    # 1. The TransformerLens model as a LensModel.
    lm = lens_model(model)
    result = fusedlens.LogitLens(lm, k=5).run(PROMPTS)
    print(f"{lm.n_layers} blocks, final norm {lm.norm.kind}, logits centred: {lm.logits_centered}")
    summary = result.summary()  # per site: mean KL to final, entropy, top-1 agreement, ...
    every6 = sorted({*range(0, len(result.sites), 6), len(result.sites) - 1})  # a few sites, the final one last
    for row in [summary[i] for i in every6]:
        print(f"  {row['site']:>8}  KL to final {row['kl_to_final']:7.3f}  top-1 = final {row['top1_agreement']:.2f}")

    # 2. From a cache: the residual stream of one prompt, decoded by the tensor-level ops.
    ids = lm.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    _, cache = model.run_with_cache(ids, names_filter=lambda name: "hook_resid" in name)
    res = residuals_from_cache(cache, ids)  # hidden [sites, tokens, d_model]: embed, resid.0 .. resid.29
    stats = ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, k=5)
    xn = ops.normalized_rows(res.hidden, lm.norm)
    kl = ops.lens_kl(xn[:-1], xn[-1], lm.unembed).kl  # the tuned lens' loss: KL(final ‖ site) per row
    assert torch.allclose(kl, stats.kl_to_final[:-1], rtol=1e-4, atol=1e-5)
    last = [lm.tokenizer.decode(int(t)) for t in stats.top1[:, -1]]
    print(f"next token after {PROMPTS[0]!r}, at those sites: {[last[i] for i in every6]}")

    # Ridge probes of each site's residual for the final log-prob of the next token (streaming sums).
    has_target = res.targets >= 0
    acc = RidgeAccumulator(len(res.sites), lm.d_model, 1)
    acc.update(res.hidden[:, has_target], stats.target_logprob[-1, has_target])
    weights, bias = fit_weights(acc, alpha=1.0)  # [sites, d_model, 1], [sites, 1]
    print(f"ridge probes: {acc.n} rows, weights {tuple(weights.shape)}")
    return {"lm": lm, "result": result, "stats": stats, "residuals": res, "weights": weights}


if __name__ == "__main__":
    main()
