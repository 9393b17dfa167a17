"""Times the README's main command (configs/digits.py) end to end and reports what it reached.

    python scripts/benchmark_default_run.py [--out benchmark_default_run.json] [--config-arg num_steps=2000]

Prints and writes (JSON): wall time of the whole command (start-up, dataset build, compile and evaluation
included), compile time, median step time and images/s over the logged windows, and the final test accuracy.
BENCHMARKS.md records its figures with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from vit_jax.metric_writers import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def run(config_arg: str, workdir: Path, data_dir: str | None) -> dict:
    config = "--config=configs/digits.py" + (f":{config_arg}" if config_arg else "")
    command = [sys.executable, "-m", "vit_jax.main", config, f"--workdir={workdir}"]
    if data_dir:
        command.append(f"--config.data_dir={data_dir}")
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = read_metrics(workdir)
    windows = [r for r in records if "perf/step_seconds" in r]
    test = next(r for r in reversed(records) if "test/accuracy" in r)
    return {
        "command": " ".join(["python", "-m", "vit_jax.main", config, "--workdir=DIR"]),
        "wall_seconds": round(wall, 1),
        "compile_seconds": round(next(r["perf/compile_seconds"] for r in records if "perf/compile_seconds" in r), 2),
        "median_step_seconds": round(statistics.median(r["perf/step_seconds"] for r in windows), 4),
        "median_images_per_second": round(statistics.median(r["perf/images_per_second"] for r in windows), 1),
        "steps": max(r["step"] for r in records),
        "test_accuracy": test["test/accuracy"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, JAX backend {jax.default_backend()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmark_default_run.json")
    parser.add_argument("--config-arg", default="", help="short overrides passed after configs/digits.py:")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        result = run(args.config_arg, Path(workdir), args.data_dir)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:>26}: {value}")


if __name__ == "__main__":
    main()
