"""The machine a benchmark ran on, named precisely enough to compare figures: CPUs of one name differ by family
and model (Zen 1 to Zen 5 are all "AMD EPYC"), and by AVX-512 and AMX."""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any


def cpu_description() -> str:
    """e.g. `AMD EPYC (family 25 model 17, AVX-512; 2 cores)`."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    fields: dict[str, str] = {}
    for line in info.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    extras = "".join(f", {name}" for name, flag in (("AVX-512", "avx512f"), ("AMX", "amx_tile")) if flag in flags)
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}{extras}; {os.cpu_count()} cores)")


def machine() -> dict[str, Any]:
    return {"cpu": cpu_description(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


@dataclasses.dataclass(frozen=True)
class CpuTime:
    """A reading of the machine's CPU time (`/proc/stat`, in clock ticks summed over its CPUs) and of this
    process's (all threads), so that a slow measurement can be told from a starved one."""

    wall: float
    process_seconds: float
    busy_ticks: int
    idle_ticks: int
    steal_ticks: int


def read_cpu_time() -> CpuTime | None:
    """None where `/proc/stat` is missing (not Linux)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal (guest time is already counted in user)
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[1:9])
    return CpuTime(time.perf_counter(), usage.ru_utime + usage.ru_stime, user + nice + system + irq + softirq,
                   idle + iowait, steal)


MIN_TICKS = 100


def cpu_load(start: CpuTime | None, end: CpuTime | None, ticks_per_second: float | None = None
             ) -> dict[str, float | None]:
    """Between two readings: the cores this process kept busy on average, the share of the machine's CPU time
    that other processes used, and the share the hypervisor gave to other machines (steal)."""
    if start is None or end is None or end.wall <= start.wall:
        return {"process_cores_busy": None, "other_processes_fraction": None, "steal_fraction": None}
    hz = ticks_per_second or os.sysconf("SC_CLK_TCK")
    busy, idle, steal = (end.busy_ticks - start.busy_ticks, end.idle_ticks - start.idle_ticks,
                         end.steal_ticks - start.steal_ticks)
    process = end.process_seconds - start.process_seconds
    total = busy + idle + steal
    counted = total >= MIN_TICKS  # the kernel counts in whole ticks (10 ms): shorter windows read as noise
    return {"process_cores_busy": process / (end.wall - start.wall),
            "other_processes_fraction": max(0.0, busy / hz - process) * hz / total if counted else None,
            "steal_fraction": steal / total if counted else None}
