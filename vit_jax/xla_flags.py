"""XLA flags vit_jax sets by default: the settings measured fastest on the CPU backend (BENCHMARKS.md).

XLA reads `XLA_FLAGS` once, when JAX first creates a backend, so `apply_default_xla_flags` must run before
anything asks for a device. A flag the user already put in `XLA_FLAGS` is left as the user set it; setting
`VIT_JAX_XLA_DEFAULTS=0` turns the defaults off. Training takes them from `config.xla_flags` ("auto": these). The flags only concern XLA:CPU; other backends ignore them.

- float32: the YNNPACK fusions off. XLA:CPU sends dots, reductions and convolutions to YNNPACK by default; its
  reductions are slow on ViT's shapes (ViT-Ti/16 inference 39 -> 56 img/s, training 12.8 -> 14.4 img/s).
- bfloat16: YNNPACK off too where oneDNN computes the products (`vit_jax.native.onednn`; ViT-Ti/16 training
  25.0 -> 27.7 img/s); kept without oneDNN or where the processor has no bf16 instructions (oneDNN then leaves
  bf16 products to XLA: `onednn.bf16_products`), where it runs the bf16 x bf16 -> f32 products of
  `vit_jax.models.mixed_precision` well (ViT-Ti/16 inference 79 img/s with it, 49 without).
Small models differ: the digits model's step is 36 ms with YNNPACK and 41 ms without, so configs/digits.py sets
`xla_flags=""` (XLA's own defaults).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from vit_jax.native import onednn

YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type"
DEFAULTS: dict[str, tuple[str, ...]] = {
    "float32": (f"{YNN_FUSIONS}=",),
    "bfloat16": (),
}


def default_xla_flags(dtype: str | None) -> tuple[str, ...]:
    if onednn.installed() and (dtype != "bfloat16" or onednn.bf16_products()):
        return DEFAULTS["float32"]
    return DEFAULTS.get(dtype or "float32", ())


def with_defaults(existing: str, defaults: tuple[str, ...]) -> str:
    """`existing` plus each default whose flag name it does not already set."""
    names = {flag.split("=", 1)[0] for flag in existing.split()}
    added = [flag for flag in defaults if flag.split("=", 1)[0] not in names]
    return " ".join([existing.strip(), *added]).strip()


def apply_xla_flags(setting: str, dtype: str | None) -> str:
    """`config.xla_flags` into `XLA_FLAGS` before the backend starts: "auto" adds the defaults for the computation
    `dtype`, any other string adds exactly its flags (each only where `XLA_FLAGS` does not set it already).
    Returns the resulting `XLA_FLAGS`."""
    flags = default_xla_flags(dtype) if setting == "auto" else tuple(setting.split())
    if os.environ.get("VIT_JAX_XLA_DEFAULTS", "1") != "0":
        os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""), flags)
    return os.environ.get("XLA_FLAGS", "")


def xla_flags_error(flags: str) -> str | None:
    """What XLA's own parser says against `flags` (an unknown flag, a value it cannot interpret), None if it takes
    them: asked in a child process, because XLA aborts the process that parses a bad flag (~0.7 s)."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode == 0:
        return None
    lines = done.stderr.splitlines()
    said = [m.group(1) for line in lines if (m := re.search(r"\] (Couldn't interpret .*|Unknown flags? in XLA_FLAGS.*)", line))]
    return (said or [line for line in lines if line.strip()][-1:] or [f"exit status {done.returncode}"])[0]
