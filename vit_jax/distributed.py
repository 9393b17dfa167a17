"""Starting JAX's multi-controller runtime: one process per host, all running the same command.

`jax.distributed.initialize` is called when the run is multi-process: with the coordinator given by flags
(`--coordinator-address`, `--num-processes`, `--process-id`; the underscore spellings work too) or by JAX's
environment variables, or detected by JAX itself on a cluster it knows (a multi-host TPU slice, a SLURM job with
several tasks). `--distributed=on` forces the call (JAX then finds the cluster itself), `off` never makes it.
"""

from __future__ import annotations

import os

import jax

MODES = ("auto", "on", "off")
MODES_HELP = ("jax.distributed: 'auto' starts it when the run is multi-process (flags below, "
              "JAX_COORDINATOR_ADDRESS, a SLURM job or a multi-host TPU slice).")  # every command's --distributed
COORDINATOR_HELP = "host:port of process 0, for multi-process runs."


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes several processes JAX can find by itself."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")  # a TPU slice with several hosts


def initialize(mode: str = "auto", coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Calls `jax.distributed.initialize` when the run is multi-process; returns whether it did."""
    if mode not in MODES:
        raise ValueError(f"distributed must be one of {MODES}; got {mode!r}")
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}: expected a positive number of processes")
    if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
        raise ValueError(f"--process_id={process_id}: expected 0..{(num_processes or 1) - 1} (one per process)")
    if mode != "off" and (num_processes or 1) > 1 and not coordinator_address and not cluster_detected():
        raise ValueError("--coordinator_address is needed with --num_processes > 1 (host:port of process 0)")
    if mode == "off" or (mode == "auto" and not explicit and not cluster_detected()):
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True
