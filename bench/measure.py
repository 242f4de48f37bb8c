"""What the bench scripts share: peak RSS of an op (Linux VmHWM, reset once its inputs
exist) and writing a result file that names the machine's ISA."""
import json
import os
import resource

import torch


def rss_kib(field: str = "VmRSS") -> int:
    """A /proc/self/status memory field in KiB (VmRSS now, VmHWM the peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Make the peak RSS restart from the current RSS (clear_refs 5), so that the peak
    measured after an op is the op's own, not that of building its inputs. Returns the
    current RSS in KiB; without procfs, the lifetime peak is the best there is."""
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


def write_result(obj, path: str) -> None:
    """Write a result as JSON, with the machine it was measured on (CPU, ISA level, kernel variants)."""
    from fusedlens.core.cpu import machine

    if isinstance(obj, dict):  # the script's own machine fields (load average, ...) are kept
        obj = {**obj, "machine": {**machine(), "torch": torch.__version__, **obj.get("machine", {})}}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print("wrote", path)
