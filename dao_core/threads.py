"""CPU thread policy: as many torch threads as there are idle cores, never more.

OpenMP threads spin at their barriers, so a torch thread whose core is taken by another process
stalls every layer: on a 2-core machine with one busy process, two threads sampled 6x slower
than one (docs/performance.md). Idle cores are measured (a 0.1 s sample of /proc/stat over the
cores this process may run on) rather than assumed; ``DAO_NUM_THREADS`` or ``OMP_NUM_THREADS``
override the measurement.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

PROBE_S = 0.1
PROC_STAT = Path("/proc/stat")


def usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def _cpu_times(cores: list[int]) -> tuple[float, float] | None:
    """(idle, total) jiffies summed over ``cores``; None where /proc/stat is unavailable."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    idle = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            # user nice system idle iowait irq softirq steal
            values = [float(v) for v in fields[:8]]
            idle += values[3] + values[4]
            total += sum(values)
    return idle, total


def idle_cores(probe_s: float = PROBE_S) -> float | None:
    """Idle cores among those this process may use, averaged over ``probe_s`` seconds."""
    cores = usable_cores()
    before = _cpu_times(cores)
    time.sleep(probe_s)
    after = _cpu_times(cores)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return len(cores) * (after[0] - before[0]) / (after[1] - before[1])


def choose_threads() -> int:
    """The thread count the policy picks (environment first, then the idle-core probe)."""
    for var in ("DAO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    idle = idle_cores()
    if idle is None:  # no probe on this platform: one thread cannot collapse
        return 1
    # A core more than 70 % idle counts as free.
    return max(1, min(len(usable_cores()), int(idle + 0.3)))


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads by the policy; returns the count."""
    threads = choose_threads()
    torch.set_num_threads(threads)
    return threads
