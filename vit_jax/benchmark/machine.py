"""The machine a benchmark ran on, named precisely enough to compare figures: CPUs of one name differ by family
and model (Zen 1 to Zen 5 are all "AMD EPYC"), and by AVX-512 and AMX."""

from __future__ import annotations

import os
import platform
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
