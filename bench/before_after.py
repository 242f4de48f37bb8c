"""Two CLI runs, an older fusedlens (another package layout) vs this one, same machine, one run each, side by side:

  fusedlens probe --train-tokens 8000 --heldout-tokens 2000   (targets: a second sweep vs the pass's own)
  fusedlens run pydoc --max-tokens 2048                        (pictures: a second load + forward vs kept rows)

`--before DIR` is a folder holding an installed fusedlens of the old layout (pip install --target DIR);
the new one is whatever `python -m fusedlens` imports. Writes bench/results/before_after.json.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from common import arg_parser, write_result


def timed(cmd, pythonpath):
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else dict(os.environ)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "fusedlens", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{cmd} failed:\n{res.stderr[-3000:]}")
    out = {"wall_s": wall}
    m = re.search(r"time: forward ([\d.]+)s, targets ([\d.]+)s, accumulate ([\d.]+)s, solve ([\d.]+)s, "
                  r"total ([\d.]+)s", res.stdout)
    if m:
        out.update(zip(("forward_s", "targets_s", "accumulate_s", "solve_s", "total_s"), map(float, m.groups())))
    return out


def main():
    ap = arg_parser(__doc__, "before_after.json", threads=None)
    ap.add_argument("--before", required=True, help="folder with the old-layout fusedlens installed")
    ap.add_argument("--after", default="", help="PYTHONPATH of the new one (default: the installed package)")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("before", args.before), ("after", args.after)):
            probe = ["probe", "--train-tokens", "8000", "--heldout-tokens", "2000", "--out", f"{tmp}/{name}_probe"]
            runj = ["run", "pydoc", "--max-tokens", "2048", "--out", f"{tmp}/{name}_run"]
            rows[name] = {"probe": timed(probe + ["--no-progress"], path),
                          "run": timed(runj + (["--quiet"] if name == "before" else ["--no-progress"]), path)}
            print(name, json.dumps(rows[name]), flush=True)
    write_result({"commands": ["fusedlens probe --train-tokens 8000 --heldout-tokens 2000",
                               "fusedlens run pydoc --max-tokens 2048"], **rows}, args.out)


if __name__ == "__main__":
    main()
