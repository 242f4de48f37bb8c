"""All-heads direct logit attribution of one 64-token prompt on SmolLM2: fused vs naive PyTorch vs the bare GEMM.

Rows: embed, every attn.i / mlp.i and every head (1 + 60 + 270 = 331 components) × 64 positions,
each the component's direct contribution through the frozen final norm. fused: one
`ops.logit_extremes` call (top-10 promoted and suppressed tokens of every row over the 49,152
tokens); naive: each component's [64 × 49,152] logits materialised, then topk of z and of -z; floor:
the same GEMM alone (z = rows @ W_Uᵀ, all rows, 2,048 at a time into one reused buffer). Best of --rounds, interleaved,
with each variant's peak RSS above its inputs; also the whole `fusedlens.dla` call (forward included).

    python bench/dla_speed.py
"""
import argparse
import os
import time

import torch

from measure import peak_rss_kib, reset_peak_rss, write_result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "dla_speed.json"))
    args = ap.parse_args()

    from fusedlens import load_model
    from fusedlens.data.pydoc import pydoc_text
    from fusedlens.dla import dla
    from fusedlens.dla.attribution import component_rows
    from fusedlens.dla.components import ComponentCapture, Frozen
    from fusedlens.ops.logit_extremes import logit_extremes

    lm = load_model()
    ids = lm.tokenizer(pydoc_text()[:4000], return_tensors="pt")["input_ids"][:, :args.tokens]
    comp, _ = ComponentCapture(lm, heads=True).run(ids)
    names, rows = component_rows(comp, Frozen.of(lm.norm, comp.final))
    w = lm.unembed.weight.float().contiguous()
    k = args.k

    def fused():
        return logit_extremes(rows, w, k, backend="cpu")

    def naive():
        out = []
        for r in rows:  # one component: [tokens, d] -> [tokens, vocab]
            z = r @ w.T
            out.append((z.topk(k, -1), (-z).topk(k, -1)))
        return out

    flat = rows.reshape(-1, rows.shape[-1])
    chunk = 2048
    buf = torch.empty(chunk, w.shape[0])

    def floor():  # the same GEMM, all rows, into one reused [2,048 x vocab] buffer (the whole is 4 GB)
        for r0 in range(0, flat.shape[0], chunk):
            part = flat[r0:r0 + chunk]
            torch.mm(part, w.T, out=buf[:part.shape[0]])

    def whole():
        return dla(lm, ids, ("attn", "mlp", "head"), k=k)

    variants = {"fused": fused, "naive_torch": naive, "bare_gemm": floor, "dla_call": whole}
    best, peak = {}, {}
    for rnd in range(args.rounds):
        for name, fn in variants.items():
            base = reset_peak_rss()
            t0 = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            peak[name] = max(peak.get(name, 0), peak_rss_kib() - base)
        print(f"round {rnd}: " + ", ".join(f"{n} {v:.3f} s" for n, v in best.items()), flush=True)
    ratio = {n: v / best["bare_gemm"] for n, v in best.items()}
    # check: the fused and naive answers agree (values to float32 accuracy)
    f, n = fused(), naive()
    top_err = max(float((f.top_logits[c] - n[c][0].values).abs().max()) for c in range(len(names)))
    print("over the bare GEMM:", {k_: round(v, 3) for k_, v in ratio.items()})
    print(f"naive / fused {best['naive_torch'] / best['fused']:.2f}; peak RSS above inputs (MiB): "
          + ", ".join(f"{k_} {v / 1024:.0f}" for k_, v in peak.items()) + f"; max |top logit diff| {top_err:.1e}")
    write_result({"tokens": args.tokens, "components": len(names), "rows": rows.shape[0] * rows.shape[1],
                  "vocab": w.shape[0], "d_model": w.shape[1], "k": k, "rounds": args.rounds,
                  "threads": torch.get_num_threads(), "seconds": best, "over_bare_gemm": ratio,
                  "naive_over_fused": best["naive_torch"] / best["fused"], "peak_rss_mib": {
                      k_: v / 1024 for k_, v in peak.items()}, "max_top_logit_diff": top_err,
                  "load_average": list(os.getloadavg())}, args.out)


if __name__ == "__main__":
    main()
