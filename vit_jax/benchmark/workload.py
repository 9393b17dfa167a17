"""What one benchmark measurement is, and the figures it produces."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from vit_jax.benchmark.machine import cpu_load, read_cpu_time

MODES = ("train", "infer")
DTYPES = ("f32", "bf16")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One (side, model, batch, dtype, mode) cell; `flops` (per step) is filled in for timm from vit_jax's count."""

    side: str  # "vit_jax" | "timm"
    variant: str  # e.g. "Ti/16"; a patch-size override is already folded in
    batch_size: int
    image_size: int
    dtype: str  # "f32" | "bf16"
    mode: str  # "train" | "infer"
    scan: bool = False
    steps: int = 10
    warmup: int = 2
    ceiling_size: int = 2048
    flops: float | None = None
    xla_flags: str = ""
    attention_impl: str = "einsum"  # vit_jax only: see vit_jax.models.attention
    matmul: str = "xla"  # vit_jax only: see vit_jax.models.blas

    @property
    def key(self) -> str:
        """The cell both sides share, for ratios."""
        scan = ",scan" if self.scan else ""
        attention = f",{self.attention_impl}" if self.attention_impl != "einsum" else ""
        matmul = f",{self.matmul}" if self.matmul != "xla" else ""
        return (f"{self.variant} {self.mode} {self.dtype} b{self.batch_size} {self.image_size}px{scan}{attention}"
                f"{matmul}")


@dataclasses.dataclass
class StepTimes:
    compile_seconds: float
    seconds: list[float]
    load: dict[str, float | None] = dataclasses.field(default_factory=dict)  # over the timed steps: `cpu_load`

    def summary(self, batch_size: int) -> dict[str, float]:
        median = statistics.median(self.seconds)
        return {
            "compile_seconds": round(self.compile_seconds, 3),
            "step_seconds_median": median,
            "step_seconds_min": min(self.seconds),
            "step_seconds_max": max(self.seconds),
            "images_per_second_median": batch_size / median,
            "images_per_second_min": batch_size / max(self.seconds),
            "images_per_second_max": batch_size / min(self.seconds),
            "timed_steps": len(self.seconds),
            **self.load,
        }


def time_steps(first: Callable[[], Any], step: Callable[[], Any], steps: int, warmup: int) -> StepTimes:
    """`first()` once (compile, or the eager first call), `warmup` untimed steps, then `steps` timed ones; each call
    must block until its results exist."""
    start = time.perf_counter()
    first()
    compile_seconds = time.perf_counter() - start
    for _ in range(warmup):
        step()
    seconds = []
    before = read_cpu_time()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return StepTimes(compile_seconds, seconds, cpu_load(before, read_cpu_time()))


def matmul_flops_per_second(product: Callable[[], Any], size: int, repeats: int = 10) -> float:
    """FLOP/s of `product()`, an n x n x n matmul that blocks until done: the median of `repeats` timed calls."""
    seconds = time_steps(product, product, steps=repeats, warmup=0).seconds
    return 2 * size**3 / statistics.median(seconds)


def utilisation(flops: float | None, step_seconds: float, ceiling_flops_per_second: float | None
                ) -> dict[str, float | None]:
    """Achieved FLOP/s and its fraction of the matmul ceiling measured on the same device and dtype (MFU)."""
    achieved = flops / step_seconds if flops else None
    mfu = achieved / ceiling_flops_per_second if achieved and ceiling_flops_per_second else None
    return {"flops_per_step": flops, "achieved_flops_per_second": achieved,
            "ceiling_flops_per_second": ceiling_flops_per_second, "mfu": mfu}
