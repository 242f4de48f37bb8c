"""Direct logit attribution (fusedlens.dla) on SmolLM2: what it costs, and what it finds on IOI.

    python bench/dla.py speed     -> bench/results/dla_speed.json
    python bench/dla.py ioi       -> bench/results/dla_ioi_smollm2.{json,txt}, _heads.png, _blocks.png

speed: all-heads DLA of one 64-token pydoc prompt, fused vs naive PyTorch vs the bare GEMM. Rows:
embed, every attn.i / mlp.i and every head (1 + 60 + 270 = 331 components) × 64 positions, each the
component's direct contribution through the frozen final norm. fused: one `ops.logit_extremes` call
(top-10 promoted and suppressed tokens of every row over the 49,152 tokens); naive: each component's
[64 × 49,152] logits materialised, then topk of z and of -z; floor: the same GEMM alone (z = rows @ W_Uᵀ,
all rows, 2,048 at a time into one reused buffer). Best of --rounds, interleaved, with each variant's
peak RSS above its inputs; also the whole `fusedlens.dla` call (forward included).

ioi: the IOI logit difference (Wang et al. 2022, Figure 3c) over the lecture's prompt and 20 variants
with other name pairs and sentence frames (each name one token with its leading space), answer = the
indirect object, counterfactual = the subject; the layer × head heatmap and layer × block bar chart.
"""
import argparse
import itertools
import time

import torch

from common import interleaved, model, pydoc_ids, result_path, threads_from, write_result

FRAMES = [
    "When {a} and {b} went to the store, {b} gave a drink to",
    "When {a} and {b} went to the park, {b} gave a ball to",
    "After {a} and {b} arrived at the party, {b} handed a gift to",
    "Then, {a} and {b} had lunch at the cafe. {b} passed the salt to",
    "While {a} and {b} were working at the office, {b} sent an email to",
]
NAMES = [(" Mary", " John"), (" Alice", " Bob"), (" Sarah", " Tom"), (" Anna", " Mark"), (" Emma", " David"),
         (" Lisa", " Paul"), (" Kate", " James"), (" Laura", " Peter")]


def speed(args):
    from fusedlens.dla import direct_logit_attribution
    from fusedlens.dla.attribution import component_rows
    from fusedlens.core.components import ComponentCapture, Frozen
    from fusedlens.ops.logit_extremes import logit_extremes

    lm = model()
    ids = pydoc_ids(lm, args.tokens)[None]
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

    variants = {"fused": fused, "naive_torch": naive, "bare_gemm": floor,
                "dla_call": lambda: direct_logit_attribution(lm, ids, ("attn", "mlp", "head"), k=k)}
    res = interleaved(variants, args.rounds, memory=True)
    best, peak = res["best"], res["peak_rss_mib"]
    ratio = {n: v / best["bare_gemm"] for n, v in best.items()}
    # check: the fused and naive answers agree (values to float32 accuracy)
    f, n = fused(), naive()
    top_err = max(float((f.top_logits[c] - n[c][0].values).abs().max()) for c in range(len(names)))
    print("over the bare GEMM:", {k_: round(v, 3) for k_, v in ratio.items()})
    print(f"naive / fused {best['naive_torch'] / best['fused']:.2f}; peak RSS above inputs (MiB): "
          + ", ".join(f"{k_} {v:.0f}" for k_, v in peak.items()) + f"; max |top logit diff| {top_err:.1e}")
    write_result({"tokens": args.tokens, "components": len(names), "rows": rows.shape[0] * rows.shape[1],
                  "vocab": w.shape[0], "d_model": w.shape[1], "k": k, "rounds": args.rounds, "seconds": best,
                  "over_bare_gemm": ratio, "naive_over_fused": best["naive_torch"] / best["fused"],
                  "peak_rss_mib": peak, "max_top_logit_diff": top_err}, args.out)


def prompts(n: int = 21):
    """The lecture's prompt first, then frames × name pairs (both orders), n in all."""
    out = [("When Mary and John went to the store, John gave a drink to", " Mary", " John")]
    for frame, (x, y) in itertools.product(FRAMES, NAMES):
        for a, b in ((x, y), (y, x)):
            p = frame.format(a=a.strip(), b=b.strip())
            if p not in [o[0] for o in out]:
                out.append((p, a, b))
    step = max(1, (len(out) - 1) // (n - 1))
    return [out[0]] + out[1::step][:n - 1]


def ioi(args):
    from fusedlens.dla import direct_logit_attribution
    from fusedlens.report.dla import format_dla_table, plot_dla

    lm = model()
    items = prompts(args.n)
    t0 = time.perf_counter()
    r = direct_logit_attribution(lm, [p for p, _, _ in items], ("attn", "mlp", "head"),
                                 answer=[a for _, a, _ in items], counterfactual=[b for _, _, b in items], k=10)
    seconds = time.perf_counter() - t0
    diff = r.logits["diff"][r.rows_of("diff")]
    table = format_dla_table(r, "diff", 20, lm.tokenizer)
    top_heads = r.top("diff", 10, prefix="head.")
    share = sum(v for _, v in top_heads) / float(diff.double().mean())
    summary = (f"{len(items)} prompts; logit difference (answer - counterfactual) mean {float(diff.mean()):.3f}, "
               f"min {float(diff.min()):.3f}, positive in {int((diff > 0).sum())}/{len(items)}; "
               f"the 10 heads with the largest |mean effect| carry {share:.2f} of the mean difference")
    print(summary + "\n" + table)
    with open(args.out + ".txt", "w") as f:
        f.write(summary + "\n\nprompts:\n" + "\n".join(f"  {p!r} -> {a!r} vs {b!r}" for p, a, b in items)
                + "\n\n" + table + "\n")
    plot_dla(r, "diff", args.out + "_heads.png", args.out + "_blocks.png", title="SmolLM2, IOI: ")
    write_result({"prompts": [{"prompt": p, "answer": a, "counterfactual": b, "logit_diff": float(d)}
                              for (p, a, b), d in zip(items, diff)],
                  "seconds": seconds, "decomposition_error": r.decomposition_error("diff"),
                  "top_components": r.top("diff", 20), "top_heads": top_heads,
                  "head_matrix": r.head_matrix("diff").tolist(), "block_matrix": r.block_matrix("diff").tolist(),
                  "summary": summary}, args.out + ".json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed", help="fused vs naive vs the bare GEMM, all heads of one prompt")
    sp.add_argument("--tokens", type=int, default=64)
    sp.add_argument("--k", type=int, default=10)
    sp.add_argument("--rounds", type=int, default=3)
    sp.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    sp.add_argument("--out", default=result_path("dla_speed.json"))
    si = sub.add_parser("ioi", help="the IOI logit difference over 21 prompts")
    si.add_argument("--n", type=int, default=21)
    si.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    si.add_argument("--out", default=result_path("dla_ioi_smollm2"), help="path stem of the .json/.txt/.png files")
    args = ap.parse_args()
    threads_from(args)
    (speed if args.what == "speed" else ioi)(args)


if __name__ == "__main__":
    main()
