"""Process measurement shared by the bench scripts: CPU seconds, peak RSS, machine load.

Used by ``queue_bench.py`` and its child clients (``_raw_client.py``, ``_direct_client.py``,
``_peer_client.py``). Standard library only (psutil where the caller has it), so a child running in
a scratch virtualenv without the project can import it too. ``observability_bench.py`` has its own
copy of the CPU loop; it can adopt this module.
"""

from __future__ import annotations

import os
import resource

__all__ = ["load_average", "proc_cpu_s", "proc_peak_rss_mb", "self_cpu_s", "self_peak_rss_mb"]


def self_cpu_s() -> float:
    """User + system CPU seconds of this process (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def self_peak_rss_mb() -> float:
    """Peak resident set of this process since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process, from ``/proc/PID/stat`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident set (``VmHWM``) of another process, in MB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (what ``uptime`` prints), recorded with every run."""
    return [round(x, 2) for x in os.getloadavg()]
