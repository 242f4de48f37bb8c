"""Logit lens from an nnsight trace: the embedded SmolLM2 wrapped by nnsight, offline.

    python examples/nnsight_lens.py

Save the residuals in a trace, then decode them with the model's own final norm and
unembedding (the LensModel of the HF model nnsight wraps): `ops.lens_stats`, `ops.lens_kl`,
`RidgeAccumulator`. nnsight runs the HF model as it is, so its statistics are the HF route's.
"""
from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local

import torch

import fusedlens
from fusedlens import ops
from fusedlens.adapters.nnsight import lens_model, residuals_from_saved, save_sites
from fusedlens.core.capture import residuals_from_tensors
from fusedlens.data.windows import pad_right
from fusedlens.probe import RidgeAccumulator, fit_weights

PROMPTS = ["The capital of France is Paris, and the capital of Italy is", "Two plus two is"]


def main(hf_lm: fusedlens.LensModel | None = None) -> dict:
    import nnsight
    from nnsight import TransformersModel

    hf_lm = hf_lm or fusedlens.load_model()  # the embedded SmolLM2-135M-Instruct
    # nnsight sets its tokenizer's padding side: give it a copy.
    model = TransformersModel(hf_lm.model, task="text-generation", tokenizer=copy.deepcopy(hf_lm.tokenizer))
    lm = lens_model(model)  # norm, unembedding, layer paths of the wrapped HF model
    # Right padding keeps every real token's positions (for left padding, pass position_ids too).
    ids, mask = pad_right([lm.tokenizer(p, return_tensors="pt").input_ids[0] for p in PROMPTS])
    inputs = {"input_ids": ids, "attention_mask": mask}

    # By hand: save each block's output (the residual before the final norm).
    with model.trace(inputs):
        outputs = nnsight.save([layer.output for layer in model.model.layers])
    by_hand = residuals_from_tensors([f"resid.{i}" for i in range(lm.n_layers)], outputs, ids, mask)
    stats = ops.lens_stats(by_hand.hidden, lm.norm, lm.unembed, by_hand.targets, k=5)  # [sites, real tokens]
    print(f"{len(by_hand.sites)} sites x {by_hand.hidden.shape[1]} tokens; mean KL to final per 6 blocks: "
          f"{[round(float(v), 2) for v in stats.kl_to_final.mean(1)[::6]]}")

    # Every site capture knows (embed, mid.i, resid.i), saved in one call inside the trace.
    with model.trace(inputs):
        saved = save_sites(model, lm, mid=True)
    res = residuals_from_saved(saved, ids, mask)
    stats = ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, k=5)
    xn = ops.normalized_rows(res.hidden, lm.norm)
    kl = ops.lens_kl(xn[:-1], xn[-1], lm.unembed).kl  # the tuned lens' loss: KL(final ‖ site) per row
    assert torch.allclose(kl, stats.kl_to_final[:-1], rtol=1e-4, atol=1e-5)
    first = res.batch_index == 0
    row = int(first.nonzero()[-1])  # the last real token of the first prompt
    print(f"next token after {PROMPTS[0]!r}: final {lm.tokenizer.decode(int(stats.top1[-1, row]))!r}, "
          f"first settled at site {res.sites[int(stats.prediction_depth[row])]}")

    # Ridge probes of each site's residual for the final log-prob of the next token (streaming sums).
    has_target = res.targets >= 0
    acc = RidgeAccumulator(len(res.sites), lm.d_model, 1)
    acc.update(res.hidden[:, has_target], stats.target_logprob[-1, has_target])
    weights, bias = fit_weights(acc, alpha=1.0)  # [sites, d_model, 1], [sites, 1]
    print(f"ridge probes: {acc.n} rows, weights {tuple(weights.shape)}")
    return {"lm": lm, "stats": stats, "residuals": res, "by_hand": by_hand, "weights": weights, "ids": ids,
            "mask": mask}


if __name__ == "__main__":
    main()
