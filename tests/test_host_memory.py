"""`vit_jax.host_memory`: the rule for when freed memory is kept, and its effect on the kernel's page-fault count."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys

import pytest

from vit_jax.host_memory import keeps

# In a fresh process (malloc's settings are the process's): a program with a 128 MiB temporary (a product's result,
# which XLA:CPU does not fuse into the sum), run with glibc's defaults, then kept. Prints the temporary size and
# the minor page faults of each run before, while kept and after a call whose buffers cannot fit (with the resident
# memory around that call). The heap's holes settle over a few runs: the steady state is the fewest faults of several
# runs. Once released, holes left in the heap may be reused without faults (glibc's own behaviour, costing no memory
# beyond what the process holds): what release guarantees is that the kept pages go back and the next run maps anew.
PROGRAM = """
import json, os, resource, time
os.environ["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type="  # YNNPACK would fuse the product and the sum
from vit_jax.host_memory import keep_freed_memory, share_main_arena
assert share_main_arena()
import jax, jax.numpy as jnp

def summed_product(x, w):
    return jnp.tanh(x @ w).sum()

x, w = jnp.ones((8192, 64), jnp.float32), jnp.ones((64, 4096), jnp.float32)
compiled = jax.jit(summed_product).lower(x, w).compile()
temp = compiled.memory_analysis().temp_size_in_bytes

def faults(runs=6):
    counts = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(compiled(x, w))
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts

default = faults()
kept = keep_freed_memory(temp, 2, jax.default_backend())
after = faults(20)  # beside other busy processes the holes took up to 4 runs to settle (6 were not always enough)
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

time.sleep(0.1)  # the thread that ran the last run frees its temporaries just after its result is ready
resident_kept = resident()
released = not keep_freed_memory(2**62, 2, jax.default_backend())  # buffers that cannot fit: glibc's defaults
returned, deadline = resident_kept - resident(), time.monotonic() + 10
while returned < 0.9 * temp and time.monotonic() < deadline:  # on a loaded machine the trim can come late
    time.sleep(0.05)
    returned = max(returned, resident_kept - resident())
print(json.dumps({"temp": temp, "default": default, "kept": kept, "after": after, "released": released,
                  "returned": returned, "again": faults()}))
"""


def test_keeps_copies_within_half_of_available_memory() -> None:
    gib = 2**30
    assert keeps(gib, 4, 8 * gib)  # 4 GiB of 8: exactly half
    assert not keeps(gib, 4, 8 * gib - 1)
    assert not keeps(gib, 4, None)  # unknown: glibc's defaults


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_kept_memory_is_not_faulted_in_again() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    pages = result["temp"] / resource.getpagesize()
    assert result["temp"] >= 128 * 2**20  # the product materialised
    assert min(result["default"]) >= 0.9 * pages  # glibc maps and unmaps a buffer this large every run
    assert result["kept"]
    assert min(result["after"]) <= 0.02 * pages  # the heap's pages are reused
    assert result["released"]
    assert result["returned"] >= 0.9 * result["temp"]  # the kept buffers' pages went back to the kernel
    assert result["again"][0] >= 0.9 * pages  # so the next run faults its buffer in again
