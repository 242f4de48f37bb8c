"""What the bench scripts share: peak RSS of an op (Linux VmHWM, reset once its inputs
exist) and writing a result file."""
import json
import os
import resource


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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print("wrote", path)
