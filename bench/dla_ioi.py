"""Direct logit attribution of the IOI logit difference on SmolLM2 (seed 004; Wang et al.'s Figure 3c).

The lecture's prompt and 20 variants with other name pairs and sentence frames (each name one
token with its leading space), answer = the indirect object, counterfactual = the subject. Writes
bench/results/dla_ioi_smollm2.{json,txt} and the layer × head heatmap / layer × block bar chart.

    python bench/dla_ioi.py
"""
import argparse
import itertools
import os
import time

import torch

from measure import write_result

FRAMES = [
    "When {a} and {b} went to the store, {b} gave a drink to",
    "When {a} and {b} went to the park, {b} gave a ball to",
    "After {a} and {b} arrived at the party, {b} handed a gift to",
    "Then, {a} and {b} had lunch at the cafe. {b} passed the salt to",
    "While {a} and {b} were working at the office, {b} sent an email to",
]
NAMES = [(" Mary", " John"), (" Alice", " Bob"), (" Sarah", " Tom"), (" Anna", " Mark"), (" Emma", " David"),
         (" Lisa", " Paul"), (" Kate", " James"), (" Laura", " Peter")]


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=21)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "dla_ioi_smollm2"))
    args = ap.parse_args()

    from fusedlens import load_model
    from fusedlens.dla import dla
    from fusedlens.report.dla import format_dla_table, plot_dla

    lm = load_model()
    items = prompts(args.n)
    t0 = time.perf_counter()
    r = dla(lm, [p for p, _, _ in items], ("attn", "mlp", "head"), answer=[a for _, a, _ in items],
            counterfactual=[b for _, _, b in items], k=10)
    seconds = time.perf_counter() - t0
    diff = r.logits["diff"][r.rows_of("diff")]
    table = format_dla_table(r, "diff", 20, lm.tokenizer)
    heads = r.head_matrix("diff")
    top_heads = r.top("diff", 10, prefix="head.")
    share = sum(v for _, v in r.top("diff", 10, prefix="head.")) / float(diff.double().mean())
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
                  "head_matrix": heads.tolist(), "block_matrix": r.block_matrix("diff").tolist(),
                  "summary": summary}, args.out + ".json")
    torch.set_printoptions(precision=2)


if __name__ == "__main__":
    main()
