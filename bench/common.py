"""What every bench script shares: where results go, the model and the pydoc tokens, timing (best of N,
variants interleaved, CUDA events), peak memory, a variant in a fresh process, and writing a result
that names the machine it was measured on (CPU, ISA level, kernel variants, torch, load).

Only the standard library at import: bench/gpu_check.py imports this before it decides which
fusedlens (installed, or the checkout's) and which Triton mode (the interpreter for --dry) to use.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def result_path(name: str) -> str:
    """bench/results/<name>: every script writes there, under its own stem."""
    return str(RESULTS / name)


def arg_parser(doc: str, out: str, threads: int | None = 0) -> argparse.ArgumentParser:
    """A parser with the options every script has: --out (default bench/results/<out>) and, unless
    threads is None, --threads (torch's threads; 0 = torch's choice). threads_from(args) applies it."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=result_path(out), help="result file (default %(default)s)")
    if threads is not None:
        ap.add_argument("--threads", type=int, default=threads,
                        help="torch threads (0: torch's choice; default %(default)s)")
    return ap


def threads_from(args) -> None:
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


# ---------------------------------------------------------------- model and corpus

@functools.lru_cache(maxsize=1)
def model(name: str | None = None):
    """A model fusedlens knows by name (None: the embedded SmolLM2-135M), loaded once per process."""
    from fusedlens import load_model

    return load_model(name)


def pydoc_ids(lm, n_tokens: int):
    """The first n_tokens ids of the pydoc corpus, [n_tokens] (no special tokens)."""
    from fusedlens.data.windows import corpus_ids

    return corpus_ids(lm.tokenizer, None, n_tokens)


def pydoc_sequences(lm, tokens: int, seq_len: int) -> list:
    """Packed pydoc sequences of seq_len, enough for `tokens`, as `fusedlens run` reads them."""
    from fusedlens.data.corpus import iter_sequences

    return list(iter_sequences(lm.tokenizer, ["pydoc"], seq_len, stop=-(-tokens // seq_len)))


# ---------------------------------------------------------------- memory (Linux VmHWM)

def rss_kib(field: str = "VmRSS") -> int:
    """A /proc/self/status memory field in KiB (VmRSS now, VmHWM the peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Make the peak RSS restart from the current RSS (clear_refs 5), so that the peak measured after
    an op is the op's own, not that of building its inputs. Returns the current RSS in KiB; without
    procfs, the lifetime peak is the best there is."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib() -> int:
    try:
        return rss_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- timing

def repeat(fn, repeats: int, memory: bool = False, keep: bool = False) -> dict:
    """fn() `repeats` times in a row: the best time, all of them, (memory) the peak RSS growth in MiB over
    what existed before the first call and (keep) the first call's output, which is then alive during
    the later calls: keep it only where it is small."""
    base = reset_peak_rss() if memory else 0
    times, first = [], None
    for i in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if keep and i == 0:
            first = out
        del out
    res = {"seconds": min(times), "all_seconds": times, "first": first}
    if memory:
        res["peak_rss_growth_mib"] = (peak_rss_kib() - base) / 1024
    return res


def interleaved(fns: dict, rounds: int, *, warmup: bool = False, alternate: bool = False, memory: bool = False,
                keep: bool = False, seconds_of=None, verbose: bool = True) -> dict:
    """Each variant once a round, in turns, on the same inputs, so that a shared machine's load hits them
    alike; the best time per variant. warmup: one untimed round first (thread pools, allocators,
    compiles); alternate: every other round in reverse order (a host whose speed drifts steadily then
    favours no variant); memory: also each variant's peak RSS growth over its call (MiB); keep: also
    the output of each variant's fastest call; seconds_of: what counts of a call, from its output (a
    job that times its own core, without its set-up), instead of the call's wall time.
    Returns {"best": {name: s}, "rounds": [{name: s}, ...], "peak_rss_mib": {...}?, "out": {...}?}."""
    best, per_round, peak, kept = {n: float("inf") for n in fns}, [], {}, {}
    for r in range(rounds + warmup):
        order = list(fns)[::-1] if alternate and r % 2 else list(fns)
        times = {}
        for name in order:
            base = reset_peak_rss() if memory else 0
            t0 = time.perf_counter()
            out = fns[name]()
            times[name] = time.perf_counter() - t0 if seconds_of is None else seconds_of(out)
            if memory:
                peak[name] = max(peak.get(name, 0.0), (peak_rss_kib() - base) / 1024)
            if r >= warmup and times[name] < best[name]:
                best[name] = times[name]
                if keep:
                    kept[name] = out
            del out
        if r >= warmup:
            per_round.append({n: times[n] for n in fns})
            if verbose:
                print(f"round {r - warmup}: " + ", ".join(f"{n} {times[n]:.3f} s" for n in fns), flush=True)
    res = {"best": best, "rounds": per_round}
    if memory:
        res["peak_rss_mib"] = peak
    if keep:
        res["out"] = kept
    return res


class Clock:
    """Times a call (CUDA events on a GPU, perf_counter on CPU) and its peak memory growth: a warm-up
    call (it compiles, autotunes, allocates), then as many timed calls as fit a budget; the median."""

    def __init__(self, cuda: bool, max_reps: int = 5):
        import torch

        self.torch, self.cuda, self.max_reps = torch, cuda, max_reps

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def once_ms(self, fn) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def measure(self, fn, budget_s: float = float("inf")) -> dict:
        """{"ms": median, "all_ms": [...], "peak_extra_bytes": peak over what was allocated before}:
        1 to max_reps timed calls, as many as fit budget_s."""
        fn()
        self.sync()
        if self.cuda:
            self.torch.cuda.empty_cache()
            base = self.torch.cuda.memory_allocated()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            base = reset_peak_rss() * 1024
        times = [self.once_ms(fn)]
        while len(times) < self.max_reps and sum(times) / 1e3 * (len(times) + 1) / len(times) < budget_s:
            times.append(self.once_ms(fn))
        peak = (self.torch.cuda.max_memory_allocated() if self.cuda else peak_rss_kib() * 1024) - base
        return {"ms": sorted(times)[len(times) // 2], "all_ms": times, "peak_extra_bytes": max(int(peak), 0)}


# ---------------------------------------------------------------- fresh processes

def run_script(script: str, args: list, env: dict | None = None) -> str:
    """Run `python script *args` in a fresh process (its peak RSS its own, its caches cold), with `env`
    added to this one's; its stdout, or SystemExit with the end of its stderr."""
    done = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode:
        raise SystemExit(f"{os.path.basename(script)} {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def in_fresh_process(script: str, args: list, env: dict | None = None) -> dict:
    """run_script, and the JSON object the last line of its stdout prints: one variant's measurement."""
    return json.loads(run_script(script, args, env).strip().splitlines()[-1])


# ---------------------------------------------------------------- the machine and the result file

def machine_info() -> dict:
    """CPU model, ISA level (what `fusedlens info` reports), the build's kernel variants, cores, torch
    threads and version, and the load average now (a shared machine's load is part of any figure)."""
    import torch
    from fusedlens.core.cpu import machine

    return {**machine(), "torch": torch.__version__, "load_average": list(os.getloadavg())}


def isa() -> str:
    """The CPU's widest ISA level fusedlens knows: 'AVX512-BF16', 'AVX-512', 'AVX2', 'NEON' or 'generic'."""
    from fusedlens.core.cpu import isa_level

    return isa_level()


def write_result(obj, path: str) -> None:
    """Write a result as JSON with machine_info() under "machine" (the script's own machine fields,
    e.g. MKL_ENABLE_INSTRUCTIONS, are kept beside it)."""
    if isinstance(obj, dict):
        obj = {**obj, "machine": {**machine_info(), **obj.get("machine", {})}}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print("wrote", path)
