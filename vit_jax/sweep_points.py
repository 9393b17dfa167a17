"""A sweep's points and their status files: what `vit_jax.sweep` writes and `vit_jax.sweep_report` reads."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax

STATUS_FILE = "sweep_point.json"  # in each point's folder


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    overrides: dict[str, Any]


def format_value(value: Any) -> str:
    """`(2, 2)` -> `2`, `(2, 4)` -> `2x4`, `0.001` -> `0.001`: values as they read in a folder name."""
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(format_value, value))
    return str(value)


def point_name(overrides: dict[str, Any]) -> str:
    """`{"model.patch_size": (2, 2), "seed": 0}` -> `patch_size-2_seed-0`."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{format_value(value)}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "", "_".join(parts)) or "base"


def sweep_points(module: Any, arg: str | None) -> list[Point]:
    points = []
    for overrides in module.get_sweep(arg):
        overrides = dict(overrides)
        name = overrides.pop("name", None) or point_name(overrides)
        points.append(Point(name, overrides))
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sweep points share folder names {duplicates}; give them a 'name'")
    return points


def read_status(workdir: Path) -> dict[str, Any]:
    path = workdir / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_status(workdir: Path, status: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / STATUS_FILE).write_text(json.dumps(status, indent=2, default=str) + "\n")
