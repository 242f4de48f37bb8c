"""One tuned-lens training step, fused linear-KL vs naive autograd on materialised logits.

python bench/tuned_cpu.py [--tokens 64] [--vocabs 49152 128256] [--out bench/results/tuned_cpu.json]

Each variant runs in a fresh process on SmolLM2-135M-shaped inputs (30 lens sites +
the final layer, d_model 576, RMSNorm): translate, final norm, KL(p_final ‖ p_lens),
backward, SGD step. Reports the fastest step time and the peak RSS growth of the
process over its inputs (the unembedding and the residuals exist before the baseline).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

SITES, D_MODEL = 30, 576


def make_inputs(tokens, vocab, seed=0):
    from fusedlens import FinalNorm, Unembed
    from fusedlens.tuned import TunedLens, standard_sites

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


def fused_loss(lens, hidden):
    return lens.kl_to_final(hidden[:-1], hidden[-1], backend="cpu").mean(1).sum()


def gemm_floor(lens, hidden):
    """Not a loss: the two GEMMs a step cannot avoid (all rows' logits, and logits-shaped grads times W)."""
    w = lens.unembed.weight
    rows = hidden.reshape(-1, hidden.shape[-1])
    logits = rows @ w.T
    return (logits @ w).sum()


LOSSES = {"fused_cpu": fused_loss, "naive_torch": naive_loss}
VARIANTS = {**LOSSES, "gemm_floor": gemm_floor}


def train_step(variant, lens, opt, hidden):
    if variant == "gemm_floor":
        return float(gemm_floor(lens, hidden))
    loss = LOSSES[variant](lens, hidden)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss():
    """Reset the kernel's high-water mark (Linux clear_refs 5) and return the current RSS in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except OSError:  # no procfs: the lifetime peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib():
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64, help="tokens per step (default 64)")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--repeats", type=int, default=5, help="steps per variant; the fastest counts")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "tuned_cpu.json"))
    ap.add_argument("--variant", choices=list(VARIANTS), help="run one variant here and print its JSON")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.tokens, args.vocabs[0], args.repeats)))
        return
    rows = []
    for vocab in args.vocabs:
        res = {variant: in_fresh_process(variant, args.tokens, vocab, args.repeats) for variant in VARIANTS}
        for r in res.values():
            print(r, flush=True)
        fused, naive = res["fused_cpu"], res["naive_torch"]
        rows.append({"vocab": vocab, "tokens": args.tokens, "results": res,
                     "naive_over_fused_time": naive["step_seconds"] / fused["step_seconds"],
                     "fused_over_gemm_floor_time": fused["step_seconds"] / res["gemm_floor"]["step_seconds"],
                     "fused_peak_mib": fused["peak_rss_growth_mib"], "naive_peak_mib": naive["peak_rss_growth_mib"],
                     "same_loss": abs(fused["first_loss"] - naive["first_loss"]) <= 1e-4 * abs(naive["first_loss"])})
        print({k: v for k, v in rows[-1].items() if k != "results"}, flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                               "load_avg_at_end": os.getloadavg()}, "rows": rows}, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
