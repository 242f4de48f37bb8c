"""The GPU check: every Triton kernel against float64 on the GPU, then timed against naive PyTorch and
the bare cuBLAS GEMMs, in one process and one command.

    python bench/gpu_check.py                 # a CUDA GPU: writes bench/results/gpu_check_<gpu-name>.json
    python bench/gpu_check.py --dry --out X   # CPU, TRITON_INTERPRET=1, tiny sizes, the same code path

Sections, each in its own try/except and time guard (a failure or an overrun is recorded in the JSON,
which is rewritten after every section, and the next section runs):
  correctness  every kernel through fusedlens.ops (backend "triton") against the float64 reference on
               the same device, with the test suites' own checks and tolerances: real sizes (d_model,
               vocab) = (576, 49152), (2048, 256000), (4096, 128256) with fp32, bf16 and fp16 weights,
               then the suites' odd shapes (bench/gpu_check_cases.py);
  lens         ops.lens_stats (Triton) vs naive PyTorch (logits per site, log_softmax, top-k, gather, KL)
               vs the bare GEMM of the same shape in bf16, tf32 and fp32, at the SmolLM2 shape (31 sites x
               8,192 tokens x 576 x 49,152) and a Llama-3-8B shape (33 x 4,096 x 4,096 x 128,256); then
               the op's extra memory at two vocabularies (flat in the vocabulary?);
  tuned        one tuned-lens step (lens_kl forward + backward) vs naive autograd vs the two-GEMM floor;
  ridge        ops.ridge_gram vs the float64 torch backend vs the bare fp32 X.T @ X.
Timing (common.Clock): CUDA events after a warm-up call (compiles and autotunes), repeats sized to the
section's budget; peak memory: torch.cuda.max_memory_allocated over the timed calls, reset per variant,
minus what was allocated before. --dry times with time.perf_counter and measures peak RSS growth instead.
The goals and the printed table: bench/gpu_check_report.py.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import time
import traceback

from common import Clock, result_path

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# seconds per section on an H100-class GPU; the whole script stays under 6 minutes
BUDGET = {"correctness": 140, "lens": 120, "tuned": 55, "ridge": 25}
DRY_BUDGET = {"correctness": 30, "lens": 60, "tuned": 40, "ridge": 30}  # the interpreter: a rehearsal, not a measurement
# (sites, tokens, d_model, vocab) and the weight dtypes timed; the dry run's stand-ins keep the code path
LENS_SHAPES = {"smollm2": ((31, 8192, 576, 49152), ("bf16", "fp32")), "llama3_8b": ((33, 4096, 4096, 128256), ("bf16",))}
# dry: 33 sites keep the Llama shape's slot layout (64 slots, one token per program under the interpreter)
DRY_LENS_SHAPES = {"smollm2": ((3, 4, 32, 256), ("bf16", "fp32")), "llama3_8b": ((33, 2, 32, 128), ("bf16",))}
TUNED_SHAPES = {"smollm2": ((30, 1024, 576, 49152), ("bf16", "fp32")), "llama3_8b": ((32, 512, 4096, 128256), ("bf16",))}
DRY_TUNED_SHAPES = {"smollm2": ((2, 4, 32, 128), ("bf16", "fp32")), "llama3_8b": ((2, 2, 64, 100), ("bf16",))}
RIDGE_SHAPES = {"smollm2": (31, 8192, 576, 4), "llama3_8b": (33, 2048, 4096, 4)}
DRY_RIDGE_SHAPES = {"smollm2": (2, 16, 32, 2), "llama3_8b": (1, 8, 48, 1)}
FLAT_VOCABS = ((31, 2048, 576), (49152, 256000))  # lens_stats extra memory at two vocabularies
DRY_FLAT_VOCABS = ((2, 4, 32), (128, 512))
MAX_REPS = 5


def gpu_name(torch, dry: bool) -> str:
    return "dry-cpu" if dry else torch.cuda.get_device_name()


class Report:
    def __init__(self, path: pathlib.Path, head: dict):
        self.path, self.data = path, {**head, "sections": {}, "goals": []}

    def write(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def run_section(report, name, fn, budget_s, hard_deadline):
    """fn(deadline) -> results; any exception is recorded, never raised."""
    t0 = time.monotonic()
    deadline = min(t0 + budget_s, hard_deadline)
    entry = report.data["sections"][name] = {"status": "running", "budget_s": budget_s}
    print(f"== {name} (budget {budget_s:.0f} s)", flush=True)
    try:
        entry["results"] = fn(deadline)
        entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others
        entry["status"] = "failed"
        entry["error"] = f"{type(e).__name__}: {e}"
        entry["traceback"] = traceback.format_exc()[-4000:]
        print(f"   FAILED: {entry['error']}", flush=True)
    entry["seconds"] = round(time.monotonic() - t0, 2)
    report.write()


def correctness(torch, device, dry):
    import gpu_check_cases as cases

    def run(deadline):
        rows = []
        for name, fn, tuned in cases.correctness_cases(dry):
            if time.monotonic() > deadline:
                rows.append({"case": name, "status": "skipped (time guard)"})
                continue
            t0 = time.monotonic()
            seed = torch.seed()  # fresh random inputs on every device, reported with the case
            os.environ["FUSEDLENS_TRITON_AUTOTUNE"] = "1" if tuned else "0"
            try:
                with torch.device(device):
                    fn()
                status, err = "passed", None
            except Exception as e:  # noqa: BLE001
                status, err = "FAILED", f"{type(e).__name__}: {str(e)[:600]}"
            finally:
                os.environ["FUSEDLENS_TRITON_AUTOTUNE"] = "1"
            rows.append({"case": name, "status": status, "seconds": round(time.monotonic() - t0, 2), "seed": seed,
                         **({"error": err} if err else {})})
            print(f"   {status:7} {name} ({rows[-1]['seconds']} s){'  ' + err if err else ''}", flush=True)
            if device != "cpu":
                torch.cuda.empty_cache()
        return {"cases": rows, "passed": sum(r["status"] == "passed" for r in rows),
                "failed": sum(r["status"] == "FAILED" for r in rows),
                "skipped": sum(r["status"].startswith("skipped") for r in rows)}
    return run


def timed(torch, clock, variants, share, flops):
    """Time each variant of one shape in turn, repeats sized so that all fit by `share` (a monotonic time;
    each still gets its warm-up and one timed call, so a shape once started gives every ratio); a
    variant's failure (e.g. out of memory) is recorded."""
    out = {}
    names = list(variants)
    for i, name in enumerate(names):
        left = max(share - time.monotonic(), 0.0)
        try:
            r = clock.measure(variants[name], left / (len(names) - i) / 2)
            r["tflops"] = flops / r["ms"] / 1e9
            out[name] = {"status": "ok", **r}
            print(f"   {name:>14}: {r['ms']:10.2f} ms {r['tflops']:8.2f} TFLOP/s  +{r['peak_extra_bytes'] / 2**20:9.1f} MiB",
                  flush=True)
        except Exception as e:  # noqa: BLE001
            out[name] = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:600]}"}
            print(f"   {name:>14}: FAILED {out[name]['error']}", flush=True)
        if clock.cuda:
            torch.cuda.empty_cache()
    return out


def over_shapes(torch, clock, deadline, jobs, spare_shares=0):
    """jobs: [(key, info, make_variants, flops)], timed in turn; each shape gets an equal share of the time
    left (spare_shares: more shares kept for what follows); shapes not begun by the deadline are skipped."""
    res = {}
    for i, (key, info, make, flops) in enumerate(jobs):
        now = time.monotonic()
        if now > deadline:
            res[key] = {"status": "skipped (time guard)"}
            continue
        print(f"   -- {key}: {info}", flush=True)
        variants = make()
        res[key] = {**info, "variants": timed(torch, clock, variants, now + (deadline - now) / (len(jobs) - i + spare_shares),
                                              flops)}
        del variants
        if clock.cuda:
            torch.cuda.empty_cache()
    return res


def lens_section(torch, clock, device, dry):
    import gpu_check_cases as cases

    def run(deadline):
        jobs = [(f"{tag} w={w}", {"shape": [S, T, d, V], "weights": w},
                 lambda S=S, T=T, d=d, V=V, w=w: cases.lens_variants(*cases.lens_inputs(S, T, d, V, w, device)),
                 2 * S * T * d * V)
                for tag, ((S, T, d, V), wnames) in (DRY_LENS_SHAPES if dry else LENS_SHAPES).items() for w in wnames]
        res = over_shapes(torch, clock, deadline, jobs, spare_shares=1)
        (S, T, d), vocabs = DRY_FLAT_VOCABS if dry else FLAT_VOCABS
        flat = {}
        for V in vocabs:  # the fused op's memory over its inputs at two vocabularies: flat?
            if time.monotonic() > deadline:
                break
            fn = cases.lens_variants(*cases.lens_inputs(S, T, d, V, "bf16", device))["triton"]
            flat[str(V)] = clock.measure(fn, 0.0)["peak_extra_bytes"]
            del fn
        res["memory_vs_vocab"] = {"shape": [S, T, d], "extra_bytes": flat}
        return res
    return run


def tuned_section(torch, clock, device, dry):
    import gpu_check_cases as cases

    def run(deadline):
        jobs = [(f"{tag} w={w}", {"shape": [L, T, d, V], "weights": w},
                 lambda L=L, T=T, d=d, V=V, w=w: cases.tuned_variants(L, T, d, V, w, device),
                 2 * 2 * (L + 1) * T * d * V)  # two GEMMs over the lens rows and the final rows
                for tag, ((L, T, d, V), wnames) in (DRY_TUNED_SHAPES if dry else TUNED_SHAPES).items() for w in wnames]
        return over_shapes(torch, clock, deadline, jobs)
    return run


def ridge_section(torch, clock, device, dry):
    import gpu_check_cases as cases

    def run(deadline):
        jobs = [(tag, {"shape": [S, N, d, m]}, lambda S=S, N=N, d=d, m=m: cases.ridge_variants(S, N, d, m, device),
                 2 * S * N * (d + m + 1) ** 2)
                for tag, (S, N, d, m) in (DRY_RIDGE_SHAPES if dry else RIDGE_SHAPES).items()]
        return over_shapes(torch, clock, deadline, jobs)
    return run


def use_checkout_if_not_installed() -> None:
    """fusedlens as installed (make install, CI), else this checkout's python/ with its Triton kernels
    from kernels/ as fusedlens.kernels, where the wheel puts them (a bare copy of the repository on a
    GPU machine has no other way to them)."""
    try:
        import fusedlens.kernels  # noqa: F401
        return
    except ImportError:
        pass
    for name in [m for m in sys.modules if m == "fusedlens" or m.startswith("fusedlens.")]:
        del sys.modules[name]
    sys.path.insert(0, str(ROOT / "python"))
    import importlib.util

    import fusedlens

    spec = importlib.util.spec_from_file_location("fusedlens.kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    kernels = importlib.util.module_from_spec(spec)
    sys.modules["fusedlens.kernels"] = kernels
    spec.loader.exec_module(kernels)
    fusedlens.kernels = kernels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry", action="store_true", help="CPU under TRITON_INTERPRET=1 at tiny sizes (the same code path)")
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/gpu_check_<gpu-name>.json)")
    ap.add_argument("--sections", default="correctness,lens,tuned,ridge", help="comma-separated subset")
    ap.add_argument("--time-limit", type=float, default=360.0, help="hard limit for the whole run, seconds")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per section instead of the defaults (GPU: %s; dry: %s)" % (BUDGET, DRY_BUDGET))
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    if args.dry:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.path[:0] = [str(ROOT / "tests"), str(HERE)]  # tests/conftest.py, not bench's
    use_checkout_if_not_installed()
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --dry for the CPU rehearsal", file=sys.stderr)
        return 2
    device = "cpu" if args.dry else "cuda"
    name = gpu_name(torch, args.dry)
    out = pathlib.Path(args.out or result_path(f"gpu_check_{re.sub(r'[^a-z0-9]+', '_', name.lower())}.json"))
    import triton

    head = {"gpu": name, "dry": args.dry, "torch": torch.__version__, "triton": triton.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": sys.version.split()[0]}
    if not args.dry:
        props = torch.cuda.get_device_properties(0)
        head["device"] = {"sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
                          "capability": f"{props.major}.{props.minor}"}
    report = Report(out, head)
    clock = Clock(not args.dry, 1 if args.dry else MAX_REPS)
    hard = t_start + args.time_limit - 10
    sections = {"correctness": correctness(torch, device, args.dry), "lens": lens_section(torch, clock, device, args.dry),
                "tuned": tuned_section(torch, clock, device, args.dry), "ridge": ridge_section(torch, clock, device, args.dry)}
    for sec in args.sections.split(","):
        budget = args.budget or (DRY_BUDGET if args.dry else BUDGET)[sec]
        run_section(report, sec, sections[sec], budget, hard)
    from gpu_check_report import goals, table

    report.data["goals"] = goals(report.data)
    report.data["seconds"] = round(time.monotonic() - t_start, 1)
    report.write()
    print(table(report.data))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
