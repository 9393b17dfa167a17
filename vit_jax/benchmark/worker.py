"""One benchmark cell in a fresh process (`python -m vit_jax.benchmark.worker '<workload JSON>'`), so that each
cell gets its own XLA flags and its own peak memory. Prints one line: `RESULT <json>`. vit_jax's side
starts as a training process does (`vit_jax.host_memory`, `config.keep_host_memory`'s default); timm's keeps glibc's
defaults, as its users run it (with vit_jax's settings its bf16 training was 40% slower: BENCHMARKS.md, experiment
27)."""

from __future__ import annotations

import json
import sys

from vit_jax.benchmark.workload import Workload
from vit_jax.host_memory import share_main_arena

RESULT_PREFIX = "RESULT "


def main(argv: list[str]) -> int:
    workload = Workload(**json.loads(argv[1]))
    if workload.side == "timm":
        from vit_jax.benchmark import timm_side as side
    else:
        share_main_arena()
        from vit_jax.benchmark import jax_side as side
    print(RESULT_PREFIX + json.dumps(side.run(workload)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
