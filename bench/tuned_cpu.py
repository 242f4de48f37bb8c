"""One tuned-lens training step, fused linear-KL vs naive autograd on materialised logits.

python bench/tuned_cpu.py [--tokens 64] [--vocabs 49152 128256] [--out bench/results/tuned_cpu.json]
python bench/tuned_cpu.py --interleaved ROUNDS [--out bench/results/tuned_cpu_interleaved.json]

Each variant runs in a fresh process on SmolLM2-135M-shaped inputs (30 lens sites +
the final layer, d_model 576, RMSNorm): translate, final norm, KL(p_final ‖ p_lens),
backward, SGD step. Reports the fastest step time and the peak RSS growth of the
process over its inputs (the unembedding and the residuals exist before the baseline).
Variants: the fused loss with fp32 and with bf16 GEMM operands, naive autograd on
materialised logits, and the floor of two GEMMs of a step's shape in fp32 and bf16
(torch's own bf16 matmul). --interleaved times every variant in one process, in
turns, so that a shared machine's load hits them alike (no memory figures).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from measure import peak_rss_kib, reset_peak_rss, write_result

SITES, D_MODEL = 30, 576
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def make_inputs(tokens, vocab, seed=0):
    from fusedlens import FinalNorm, Unembed
    from fusedlens.tuned.lens import TunedLens, standard_sites

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(SITES + 1, tokens, D_MODEL, generator=g).mul_(2)  # in place: no temporaries
    norm = FinalNorm("rmsnorm", torch.rand(D_MODEL, generator=g) + 0.5, None, 1e-5)
    unembed = Unembed(torch.randn(vocab, D_MODEL, generator=g).div_(D_MODEL ** 0.5))
    lens = TunedLens(standard_sites(SITES), norm, unembed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    opt = torch.optim.SGD(lens.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return hidden, lens, opt


def naive_loss(lens, hidden):
    """What one writes without fusedlens: every site's logits as one autograd graph."""
    logits = lens(hidden[:-1])                                   # [S, T, V], kept for the backward
    logp_final = torch.log_softmax(lens.unembed(lens.norm(hidden[-1])), -1)
    kl = (logp_final.exp() * (logp_final - torch.log_softmax(logits, -1))).sum(-1)
    return kl.mean(1).sum()


def fused_loss(lens, hidden, compute="fp32"):
    return lens.kl_to_final(hidden[:-1], hidden[-1], backend="cpu", compute=compute).mean(1).sum()


def gemm_floor(lens, hidden, dtype=torch.float32):
    """Not a loss: the two GEMMs a step cannot avoid (all rows' logits, and logits-shaped grads times W)."""
    w = lens.unembed.weight.to(dtype)
    rows = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    logits = rows @ w.T
    return (logits @ w).float().sum()


LOSSES = {"fused_cpu": fused_loss, "fused_cpu_bf16": lambda lens, hidden: fused_loss(lens, hidden, "bf16"),
          "naive_torch": naive_loss}
FLOORS = {"gemm_floor": gemm_floor, "gemm_floor_bf16": lambda lens, hidden: gemm_floor(lens, hidden, torch.bfloat16)}
VARIANTS = {**LOSSES, **FLOORS}


def train_step(variant, lens, opt, hidden):
    if variant in FLOORS:
        return float(FLOORS[variant](lens, hidden))
    loss = LOSSES[variant](lens, hidden)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def run_variant(variant, tokens, vocab, repeats):
    warm_hidden, warm_lens, warm_opt = make_inputs(1, 64)
    train_step(variant, warm_lens, warm_opt, warm_hidden)  # load libraries and thread pools before the baseline
    hidden, lens, opt = make_inputs(tokens, vocab)
    base = reset_peak_rss()
    times, losses = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        losses.append(train_step(variant, lens, opt, hidden))
        times.append(time.perf_counter() - t0)
    peak = peak_rss_kib()
    return {"variant": variant, "tokens": tokens, "vocab": vocab, "sites": SITES, "d_model": D_MODEL,
            "step_seconds": min(times), "all_step_seconds": times, "first_loss": losses[0],
            "peak_rss_growth_mib": (peak - base) / 1024, "threads": torch.get_num_threads()}


def in_fresh_process(variant, tokens, vocab, repeats):
    cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(tokens), "--vocabs", str(vocab),
           "--repeats", str(repeats)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def interleaved(tokens, vocab, rounds):
    """Every variant in this process on the same inputs, one step each in turns; the best of `rounds`."""
    states = {v: make_inputs(tokens, vocab) for v in VARIANTS}  # same seed: identical inputs and lenses
    best = {v: float("inf") for v in VARIANTS}
    first = {}
    for r in range(rounds + 1):  # round 0 warms up thread pools, allocators and optimizer state; not timed
        for v, (hidden, lens, opt) in states.items():
            t0 = time.perf_counter()
            loss = train_step(v, lens, opt, hidden)
            if r:
                best[v] = min(best[v], time.perf_counter() - t0)
            first.setdefault(v, loss)
    return {"vocab": vocab, "tokens": tokens, "sites": SITES, "step_seconds": best, "first_loss": first,
            "naive_over_fused_bf16": best["naive_torch"] / best["fused_cpu_bf16"],
            "naive_over_fused_fp32": best["naive_torch"] / best["fused_cpu"],
            "fused_bf16_over_fp32": best["fused_cpu_bf16"] / best["fused_cpu"],
            "fused_fp32_over_gemm_floor": best["fused_cpu"] / best["gemm_floor"],
            "fused_bf16_over_gemm_floor_bf16": best["fused_cpu_bf16"] / best["gemm_floor_bf16"],
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64, help="tokens per step (default 64)")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--repeats", type=int, default=5, help="steps per variant; the fastest counts")
    ap.add_argument("--out", default=None,
                    help="result file (default bench/results/tuned_cpu.json, or tuned_cpu_interleaved.json)")
    ap.add_argument("--variant", choices=list(VARIANTS), help="run one variant here and print its JSON")
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="time the variants in one process, in turns (no memory figures)")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.tokens, args.vocabs[0], args.repeats)))
        return
    if args.interleaved:
        rows = [interleaved(args.tokens, vocab, args.interleaved) for vocab in args.vocabs]
        for row in rows:
            print(row, flush=True)
        write_result({"mode": "interleaved", "cpus": os.cpu_count(), "torch": torch.__version__, "rows": rows},
                     args.out or os.path.join(RESULTS, "tuned_cpu_interleaved.json"))
        return
    rows = []
    for vocab in args.vocabs:
        res = {variant: in_fresh_process(variant, args.tokens, vocab, args.repeats) for variant in VARIANTS}
        for r in res.values():
            print(r, flush=True)
        fused, bf16, naive = res["fused_cpu"], res["fused_cpu_bf16"], res["naive_torch"]
        rows.append({"vocab": vocab, "tokens": args.tokens, "results": res,
                     "naive_over_fused_time": naive["step_seconds"] / fused["step_seconds"],
                     "naive_over_fused_bf16_time": naive["step_seconds"] / bf16["step_seconds"],
                     "fused_over_gemm_floor_time": fused["step_seconds"] / res["gemm_floor"]["step_seconds"],
                     "fused_peak_mib": fused["peak_rss_growth_mib"], "naive_peak_mib": naive["peak_rss_growth_mib"],
                     "fused_bf16_peak_mib": bf16["peak_rss_growth_mib"],
                     "same_loss": abs(fused["first_loss"] - naive["first_loss"]) <= 1e-4 * abs(naive["first_loss"])})
        print({k: v for k, v in rows[-1].items() if k != "results"}, flush=True)
    write_result({"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "load_avg_at_end": os.getloadavg()},
                  "rows": rows}, args.out or os.path.join(RESULTS, "tuned_cpu.json"))


if __name__ == "__main__":
    main()
