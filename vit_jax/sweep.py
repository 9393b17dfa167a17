"""Sweeps: every point of a sweep config trained by the normal loop in its own folder, then one report.

    python -m vit_jax.sweep --config=configs/sweeps/patch_size.py[:arg] --workdir=DIR [--point=K] [--collect]

A sweep config has `get_config(arg)` (the base config) and `get_sweep(arg)` (a list of override dicts, e.g. the
product of patch sizes and seeds; a dict may name its point with a `name` key). Point K runs in `DIR/<name>`.
Running the sweep again skips finished points and resumes unfinished ones (each point resumes from its own
checkpoints); a point that fails is recorded with its error in `DIR/<name>/sweep_point.json` and the others run.
`--point=K` runs only point K (one per process or machine); `--collect` only writes the report:
`DIR/results.csv`, `DIR/results.md` and `DIR/*.png` (see `vit_jax.sweep_report`). A sweep config with
`get_study(arg)` is a resolution-transfer study: each trained point is also evaluated at other resolutions (and
fine-tuned there), and its report is the study's (see `vit_jax.resolution_study`). Base-config fields can be
overridden as `--config.field=value`, as for `vit_jax.main`.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from vit_jax import config_validation
from vit_jax.config import config_module, set_field
from vit_jax.config_validation import ConfigError
from vit_jax.console import quiet_logging
from vit_jax.entry import (
    InputError,
    check_workdir,
    define_process_flags,
    exit_statuses,
    parse_flags,
    start_process,
)
from vit_jax.sweep_points import Point, read_status, sweep_points, write_status
from vit_jax.train import Preempted, train_and_evaluate

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags; defined only when run as a command, so that importing this module defines none."""
    config_flags.DEFINE_config_file("config", None, "Sweep config file, e.g. configs/sweeps/patch_size.py")
    flags.DEFINE_string("workdir", None, "Directory of the sweep; point K runs in DIR/<name of K>.")
    flags.DEFINE_integer("point", None, "Run only this point (0-based), e.g. one point per machine.")
    flags.DEFINE_bool("collect", False, "Only write the report from the points already run.")
    define_process_flags()
    flags.mark_flags_as_required(["config", "workdir"])


def load_sweep(spec: str) -> tuple[Any, str | None]:
    """The sweep module at `path[:arg]`, and `arg`."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise InputError(f"--config={spec}: no such file; expected a sweep config, e.g. configs/sweeps/patch_size.py")
    module = config_module(path)
    if not hasattr(module, "get_sweep"):
        raise InputError(f"--config={spec}: {path} has no get_sweep(arg): it is a config, not a sweep config")
    return module, arg or None


def point_config(base: ConfigDict, point: Point) -> ConfigDict:
    config = copy.deepcopy(base)
    for key, value in point.overrides.items():
        set_field(config, key, value)
    return config


def run_point(base: ConfigDict, point: Point, workdir: Path) -> dict[str, Any]:
    """Trains (or resumes) one point; returns and records its status. Finished points are skipped."""
    status = read_status(workdir)
    if status.get("status") == "done":
        return status
    status = {"name": point.name, "overrides": point.overrides, "status": "running",
              "wall_seconds": status.get("wall_seconds", 0.0)}
    write_status(workdir, status)
    start = time.perf_counter()
    try:
        train_and_evaluate(point_config(base, point), workdir)
        status.update(status="done", error=None)
    except (Preempted, KeyboardInterrupt):
        status.update(status="interrupted", wall_seconds=status["wall_seconds"] + time.perf_counter() - start)
        write_status(workdir, status)
        raise
    except Exception as error:  # noqa: BLE001 - a failed point is recorded; the sweep goes on
        logging.exception("sweep point %s failed", point.name)
        status.update(status="failed", error=f"{type(error).__name__}: {error}",
                      traceback=traceback.format_exc(limit=8))
    status["wall_seconds"] += time.perf_counter() - start
    write_status(workdir, status)
    return status


def check_points(base: ConfigDict, points: list[Point], only: int | None) -> None:
    """Every point to run is a valid config (the base with its overrides), checked before the first trains: a bad
    base config is one error, not a failure recorded for each point."""
    for point in points if only is None else [points[only]]:
        try:
            config_validation.validate(point_config(base, point), jax.device_count(), jax.process_count())
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"sweep point {points.index(point)} ({point.name}): {error}") from None


def check_point(only: int | None, points: list[Point]) -> None:
    if only is not None and not 0 <= only < len(points):
        raise InputError(f"--point={only}: no such point; expected 0..{len(points) - 1} (the sweep has "
                         f"{len(points)} points)")


def run_sweep(base: ConfigDict, points: list[Point], sweep_dir: Path, only: int | None = None) -> list[dict]:
    check_point(only, points)
    selected = points if only is None else [points[only]]
    statuses = []
    for point in selected:
        print(f"sweep point {points.index(point)}/{len(points) - 1}: {point.name} {point.overrides}", flush=True)
        statuses.append(run_point(base, point, sweep_dir / point.name))
        print(f"  {statuses[-1]['status']}" + (f": {statuses[-1]['error']}" if statuses[-1].get("error") else ""),
              flush=True)
    return statuses


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logging()
    from vit_jax import resolution_study
    from vit_jax.sweep_report import write_report  # matplotlib only when reporting

    with exit_statuses():
        sweep_dir = check_workdir(FLAGS.workdir)
        module, arg = load_sweep(config_flags.get_config_filename(FLAGS["config"]))
        points = sweep_points(module, arg)
        study = resolution_study.study_of(module, arg)
        check_point(FLAGS.point, points)
        start_process(FLAGS.config)
        if not FLAGS.collect:
            check_points(FLAGS.config, points, FLAGS.point)
            statuses = run_sweep(FLAGS.config, points, sweep_dir, FLAGS.point)
            selected = points if FLAGS.point is None else [points[FLAGS.point]]
            for point, status in zip(selected, statuses, strict=True):
                if study is not None and status.get("status") == "done":
                    print(f"  evaluating {point.name} at {len(study.sizes)} resolutions", flush=True)
                    resolution_study.evaluate_point(sweep_dir / point.name, study)
    if jax.process_index() == 0:
        report = write_report if study is None else resolution_study.write_report  # a study reports transfer
        for path in report(sweep_dir, points):
            print(f"wrote {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
