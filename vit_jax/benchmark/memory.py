"""Peak memory of a training step, with and without `remat` / `scan`, and the largest batch under a budget.

    python -m vit_jax.benchmark.memory --variant B/16 --batch-size 32 --budget-gib 24 [--out memory.json]

Compiles (never runs) vit_jax's real train step (`make_train_step`, AdamW, clipping) on abstract inputs and reads
XLA's buffer assignment: arguments + outputs + temporaries - donated aliases, the peak the device must hold (what
`python -m vit_jax.benchmark` reports as XLA's peak). Peak memory is affine in the batch size, so the largest batch
under the budget is solved from two compiles and then checked by compiling at it (stepping down while over).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from vit_jax.benchmark.jax_side import NUM_CLASSES
from vit_jax.benchmark.machine import cpu_description
from vit_jax.config import base_config
from vit_jax.models import create_model
from vit_jax.optim import learning_rate_schedule, make_optimizer
from vit_jax.steps import TrainState, make_train_step

SETTINGS = {"plain": {}, "remat": {"remat": True}, "scan": {"scan": True}, "scan+remat": {"scan": True, "remat": True}}


def step_peak_bytes(variant: str, batch_size: int, image_size: int, dtype: str, **options: Any) -> int:
    model = create_model(variant, num_classes=NUM_CLASSES, dtype=jnp.bfloat16 if dtype == "bf16" else None,
                         **options)
    config = base_config()
    tx = make_optimizer(config.optimizer, 1000)
    images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)

    def init() -> TrainState:
        params = model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    step = make_train_step(model, tx, learning_rate_schedule(config.optimizer, 1000), dropout_key=jax.random.key(1))
    lowered = jax.jit(step, donate_argnums=0).lower(jax.eval_shape(init), {"image": images, "label": labels})
    memory = lowered.compile().memory_analysis()
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
               - memory.alias_size_in_bytes)


def largest_batch(peak_at: Any, budget: int, probe: int) -> tuple[int, int]:
    """(batch, its peak): the largest batch whose peak is within `budget`, solved from the affine fit through
    `probe` and `2 * probe` and checked by compiling; where the fit was optimistic, bisected between the largest
    batch known to fit and the smallest known not to. (0, 0): not even batch 1 fits."""
    known = {probe: peak_at(probe), 2 * probe: peak_at(2 * probe)}
    per_example = max((known[2 * probe] - known[probe]) / probe, 1.0)
    solved = max(1, int((budget - (known[probe] - per_example * probe)) // per_example))
    known[solved] = peak_at(solved)
    if known[solved] <= budget:
        return solved, known[solved]
    fits = max((b for b, peak in known.items() if peak <= budget), default=0)
    over = min(b for b, peak in known.items() if peak > budget)
    while over - fits > 1:
        middle = (fits + over) // 2
        known[middle] = peak_at(middle)
        fits, over = (middle, over) if known[middle] <= budget else (fits, middle)
    return fits, known.get(fits, 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", choices=("f32", "bf16"), default="f32")
    parser.add_argument("--budget-gib", type=float, default=24.0)
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    budget = int(args.budget_gib * 2**30)
    rows = []
    for name in args.settings:
        peak_at = functools.cache(lambda batch, name=name: step_peak_bytes(
            args.variant, batch, args.image_size, args.dtype, **SETTINGS[name]))  # batch 32 is also the first probe
        peak = peak_at(args.batch_size)
        batch, batch_peak = largest_batch(peak_at, budget, args.batch_size)
        rows.append({"setting": name, "batch_size": args.batch_size, "peak_gib": round(peak / 2**30, 2),
                     "largest_batch_under_budget": batch, "its_peak_gib": round(batch_peak / 2**30, 2)})
        print(f"{args.variant} {args.dtype} {args.image_size}px {name:>10}: peak {peak / 2**30:6.2f} GiB at batch "
              f"{args.batch_size}; largest batch under {args.budget_gib:g} GiB: {batch} ({batch_peak / 2**30:.2f} "
              f"GiB)", flush=True)
    if args.out:
        result = {"variant": args.variant, "dtype": args.dtype, "image_size": args.image_size,
                  "budget_gib": args.budget_gib, "backend": jax.default_backend(), "machine": platform.machine(), "cpu": cpu_description(),
                  "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
