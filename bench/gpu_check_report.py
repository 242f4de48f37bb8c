"""bench/gpu_check.py's verdicts and table: the goals, each stated next to the figure it judges.

Goals: Triton lens_stats at >= 70 % of the cuBLAS bf16 GEMM rate of the same shape and
>= 4 x naive PyTorch, its memory flat in the vocabulary; the lens_kl step (forward + backward) at
<= 1.1 x the two-GEMM floor of the same precision (bf16 floor for bf16 weights, fp32 for fp32).
A dry run (CPU interpreter) measures nothing: its verdicts read "dry".
"""
from __future__ import annotations

RATE_GOAL, NAIVE_GOAL, FLAT_GOAL, STEP_GOAL = 0.70, 4.0, 1.10, 1.10


def _ok(v: dict, *names) -> bool:
    return all(v.get(n, {}).get("status") == "ok" for n in names)


def goals(data: dict) -> list[dict]:
    """One entry per goal and shape: the figure, the goal and met / not met (or dry, or missing)."""
    dry = data.get("dry", False)
    out = []

    def add(what, value, goal, met, unit):
        out.append({"goal": what, "value": value, "target": goal, "unit": unit,
                    "verdict": "dry" if dry else ("missing" if value is None else ("met" if met else "not met"))})

    lens = data["sections"].get("lens", {}).get("results", {})
    for key, r in lens.items():
        v = r.get("variants") if isinstance(r, dict) else None
        if not v:
            continue
        rate = v["triton"]["tflops"] / v["cublas_bf16"]["tflops"] if _ok(v, "triton", "cublas_bf16") else None
        add(f"lens_stats {key}: share of the cuBLAS bf16 rate", rate, RATE_GOAL, rate is not None and rate >= RATE_GOAL,
            "fraction")
        speed = v["naive_torch"]["ms"] / v["triton"]["ms"] if _ok(v, "triton", "naive_torch") else None
        add(f"lens_stats {key}: speed-up over naive PyTorch", speed, NAIVE_GOAL, speed is not None and speed >= NAIVE_GOAL,
            "x")
    flat = lens.get("memory_vs_vocab", {}).get("extra_bytes", {})
    if len(flat) == 2:
        small, big = (flat[k] for k in sorted(flat, key=int))
        ratio = big / max(small, 1)
        add(f"lens_stats extra memory, vocab {max(flat, key=int)} over {min(flat, key=int)}", ratio, FLAT_GOAL,
            ratio <= FLAT_GOAL, "x")
    tuned = data["sections"].get("tuned", {}).get("results", {})
    for key, r in tuned.items():
        v = r.get("variants", {})
        floor = "floor_bf16" if r.get("weights") == "bf16" else "floor_fp32"
        ratio = v["triton"]["ms"] / v[floor]["ms"] if _ok(v, "triton", floor) else None
        add(f"lens_kl step {key}: time over the {floor}", ratio, STEP_GOAL, ratio is not None and ratio <= STEP_GOAL, "x")
    return out


def table(data: dict) -> str:
    """The stdout summary: per timed shape, each variant's time, TFLOP/s, share of cuBLAS bf16, naive over it and
    peak memory over its inputs; then the correctness count and the goals."""
    lines = [f"GPU check on {data.get('gpu')}" + ("  (DRY RUN on CPU: nothing here is a GPU figure)" if data.get("dry") else "")]
    corr = data["sections"].get("correctness", {})
    if corr.get("results"):
        c = corr["results"]
        lines.append(f"correctness: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
        lines += [f"  FAILED {r['case']}: {r.get('error', '')[:200]}" for r in c["cases"] if r["status"] == "FAILED"]
    for sec in ("lens", "tuned", "ridge"):
        s = data["sections"].get(sec, {})
        if s.get("status") == "failed":
            lines.append(f"{sec}: FAILED {s.get('error')}")
        for key, r in (s.get("results") or {}).items():
            v = r.get("variants") if isinstance(r, dict) else None
            if not v:
                continue
            ref = next((v[n] for n in ("cublas_bf16", "floor_bf16", "gemm_fp32") if _ok(v, n)), None)
            naive = next((v[n] for n in ("naive_torch", "torch_float64") if _ok(v, n)), None)
            lines.append(f"{sec} {key} (shape {r.get('shape')})")
            lines.append(f"  {'variant':>14} {'ms':>10} {'TFLOP/s':>8} {'%ref':>6} {'naive/x':>8} {'peak MiB':>9} {'mem/x':>6}")
            for name, x in v.items():
                if x.get("status") != "ok":
                    lines.append(f"  {name:>14} {x.get('status')} {x.get('error', '')[:120]}")
                    continue
                pct = f"{100 * x['tflops'] / ref['tflops']:6.1f}" if ref else "   n/a"
                spd = f"{naive['ms'] / x['ms']:8.2f}" if naive else "     n/a"
                mem = f"{naive['peak_extra_bytes'] / max(x['peak_extra_bytes'], 1):6.1f}" if naive else "   n/a"
                lines.append(f"  {name:>14} {x['ms']:10.2f} {x['tflops']:8.2f} {pct} {spd} "
                             f"{x['peak_extra_bytes'] / 2**20:9.1f} {mem}")
    lines.append("%ref: share of the cuBLAS bf16 GEMM (lens), bf16 two-GEMM floor (tuned) or fp32 X.T@X (ridge) rate;"
                 " naive/x and mem/x: naive PyTorch (ridge: float64 torch) over the variant")
    for g in data.get("goals", []):
        val = "n/a" if g["value"] is None else f"{g['value']:.3g}"
        lines.append(f"  [{g['verdict']}] {g['goal']}: {val} (goal {'>=' if 'share' in g['goal'] or 'speed' in g['goal'] else '<='} "
                     f"{g['target']})")
    return "\n".join(lines)
