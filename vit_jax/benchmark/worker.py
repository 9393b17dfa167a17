"""One benchmark cell in a fresh process (`python -m vit_jax.benchmark.worker '<workload JSON>'`), so that each
cell gets its own XLA flags and its own peak memory. Prints one line: `RESULT <json>`. Both sides keep
the host memory they free (`vit_jax.host_memory`; vit_jax where its step's buffers fit, timm always: its steps
page-fault less with it too)."""

from __future__ import annotations

import json
import sys

from vit_jax.benchmark.workload import Workload
from vit_jax.host_memory import keep_freed_memory, share_main_arena

RESULT_PREFIX = "RESULT "


def main(argv: list[str]) -> int:
    share_main_arena()
    workload = Workload(**json.loads(argv[1]))
    if workload.side == "timm":
        keep_freed_memory(0, 1, "cpu")
        from vit_jax.benchmark import timm_side as side
    else:
        from vit_jax.benchmark import jax_side as side
    print(RESULT_PREFIX + json.dumps(side.run(workload)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
