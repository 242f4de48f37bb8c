"""One tuned-lens training step, fused linear-KL (ops.lens_kl) vs naive autograd on materialised logits.

python bench/tuned.py [--tokens 64] [--vocabs 49152 128256]          -> bench/results/tuned.json
python bench/tuned.py --interleaved ROUNDS                            -> bench/results/tuned_interleaved.json
pytest bench/tuned.py --benchmark-json=bench/results/tuned_pytest.json   (pytest-benchmark, 32 tokens)

Each variant runs in a fresh process on SmolLM2-135M-shaped inputs (30 lens sites +
the final layer, d_model 576, RMSNorm): translate, final norm, KL(p_final ‖ p_lens),
backward, SGD step. Reports the fastest step time and the peak RSS growth of the
process over its inputs (the unembedding and the residuals exist before the baseline).
Variants: the fused loss with fp32 and with bf16 GEMM operands, naive autograd on
materialised logits, and the floor of two GEMMs of a step's shape in fp32 and bf16
(torch's own bf16 matmul). --interleaved times every variant in one process, in
turns, so that a shared machine's load hits them alike (no memory figures).
"""
import json

import pytest
import torch

from common import arg_parser, in_fresh_process, interleaved, repeat, result_path, threads_from, write_result

SITES, D_MODEL = 30, 576


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
    r = repeat(lambda: train_step(variant, lens, opt, hidden), repeats, memory=True, keep=True)
    return {"variant": variant, "tokens": tokens, "vocab": vocab, "sites": SITES, "d_model": D_MODEL,
            "step_seconds": r["seconds"], "all_step_seconds": r["all_seconds"], "first_loss": r["first"],
            "peak_rss_growth_mib": r["peak_rss_growth_mib"]}


def interleaved_row(tokens, vocab, rounds):
    """Every variant in this process on the same inputs, one step each in turns; the best of `rounds`
    after a warm-up round (thread pools, allocators and optimizer state)."""
    states = {v: make_inputs(tokens, vocab) for v in VARIANTS}  # same seed: identical inputs and lenses
    first = {}  # each variant's loss at the shared starting point

    def step(v):
        hidden, lens, opt = states[v]
        loss = train_step(v, lens, opt, hidden)
        first.setdefault(v, loss)
        return loss

    best = interleaved({v: (lambda v=v: step(v)) for v in VARIANTS}, rounds, warmup=True)["best"]
    return {"vocab": vocab, "tokens": tokens, "sites": SITES, "step_seconds": best, "first_loss": first,
            "naive_over_fused_bf16": best["naive_torch"] / best["fused_cpu_bf16"],
            "naive_over_fused_fp32": best["naive_torch"] / best["fused_cpu"],
            "fused_bf16_over_fp32": best["fused_cpu_bf16"] / best["fused_cpu"],
            "fused_fp32_over_gemm_floor": best["fused_cpu"] / best["gemm_floor"],
            "fused_bf16_over_gemm_floor_bf16": best["fused_cpu_bf16"] / best["gemm_floor_bf16"]}


def fresh_processes(tokens, vocabs, repeats, out):
    rows = []
    for vocab in vocabs:
        res = {variant: in_fresh_process(__file__, ["--variant", variant, "--tokens", tokens, "--vocabs", vocab,
                                                    "--repeats", repeats]) for variant in VARIANTS}
        for r in res.values():
            print(r, flush=True)
        fused, bf16, naive = res["fused_cpu"], res["fused_cpu_bf16"], res["naive_torch"]
        rows.append({"vocab": vocab, "tokens": tokens, "results": res,
                     "naive_over_fused_time": naive["step_seconds"] / fused["step_seconds"],
                     "naive_over_fused_bf16_time": naive["step_seconds"] / bf16["step_seconds"],
                     "fused_over_gemm_floor_time": fused["step_seconds"] / res["gemm_floor"]["step_seconds"],
                     "fused_peak_mib": fused["peak_rss_growth_mib"], "naive_peak_mib": naive["peak_rss_growth_mib"],
                     "fused_bf16_peak_mib": bf16["peak_rss_growth_mib"],
                     "same_loss": abs(fused["first_loss"] - naive["first_loss"]) <= 1e-4 * abs(naive["first_loss"])})
        print({k: v for k, v in rows[-1].items() if k != "results"}, flush=True)
    write_result({"rows": rows}, out)


def main():
    ap = arg_parser(__doc__, "tuned.json")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per step (default 64)")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--repeats", type=int, default=5, help="steps per variant; the fastest counts")
    ap.add_argument("--variant", choices=list(VARIANTS), help="run one variant here and print its JSON")
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="time the variants in one process, in turns (no memory figures; default --out "
                    "bench/results/tuned_interleaved.json)")
    args = ap.parse_args()
    threads_from(args)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.tokens, args.vocabs[0], args.repeats)))
    elif args.interleaved:
        rows = [interleaved_row(args.tokens, vocab, args.interleaved) for vocab in args.vocabs]
        for row in rows:
            print(row, flush=True)
        out = args.out if args.out != ap.get_default("out") else result_path("tuned_interleaved.json")
        write_result({"mode": "interleaved", "rows": rows}, out)
    else:
        fresh_processes(args.tokens, args.vocabs, args.repeats, args.out)


# ---------------------------------------------------------------- pytest-benchmark mode

@pytest.mark.benchmark(group="tuned_step")
@pytest.mark.parametrize("vocab", [49152, 128256], ids=lambda v: f"vocab{v}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tuned_step(benchmark, variant, vocab):
    hidden, lens, opt = make_inputs(32, vocab)
    benchmark.pedantic(train_step, (variant, lens, opt, hidden), rounds=2)


if __name__ == "__main__":
    main()
