"""ops.target_logit (the gather-dot): the fused C++ kernel vs naive PyTorch (gather rows, multiply, sum).

python bench/target_logit.py [--rounds 5]   -> bench/results/target_logit.json
pytest bench/target_logit.py --benchmark-json=bench/results/target_logit_pytest.json   (pytest-benchmark)

31 sites x 2,048 rows of d_model 576 against SmolLM2's 49,152-token unembedding. The floor for this op
is reading the gathered rows; there is no GEMM to compare.
"""
import pytest
import torch

from common import arg_parser, interleaved, threads_from, write_result

ROWS, D, VOCAB = 31 * 2048, 576, 49152


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, D, generator=g)
    w = torch.randn(VOCAB, D, generator=g)
    ids = torch.randint(0, VOCAB, (ROWS,), generator=g)
    return x, w, ids


def variants(x, w, ids) -> dict:
    from fusedlens import ops

    return {"fused_cpu": lambda: ops.target_logit(x, w, ids, backend="cpu"),
            "naive_torch": lambda: (x * w[ids]).sum(-1)}


def main():
    ap = arg_parser(__doc__, "target_logit.json")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    threads_from(args)
    best = interleaved(variants(*make_inputs()), args.rounds, warmup=True)["best"]
    print(f"naive / fused {best['naive_torch'] / best['fused_cpu']:.2f}")
    write_result({"rows": ROWS, "d_model": D, "vocab": VOCAB, "rounds": args.rounds, "seconds": best,
                  "naive_over_fused": best["naive_torch"] / best["fused_cpu"]}, args.out)


# ---------------------------------------------------------------- pytest-benchmark mode

@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.mark.benchmark(group="target_logit")
@pytest.mark.parametrize("variant", ["fused_cpu", "naive_torch"])
def test_target_logit(benchmark, inputs, variant):
    benchmark(variants(*inputs)[variant])


if __name__ == "__main__":
    main()
