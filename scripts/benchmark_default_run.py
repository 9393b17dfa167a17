"""Times the README's main command (configs/digits.py) end to end, once per seed, and says where the time went.

    python scripts/benchmark_default_run.py [--seeds 0 1 2] [--out benchmark_default_run.json] [--config-arg ...]

Each seed runs `python -m vit_jax.main --config=configs/digits.py --workdir=DIR` in a fresh process (the first one
also builds the dataset when the TFDS data dir does not hold it yet). Prints and writes (JSON), per seed: wall time
of the whole command, its parts (the train step's compile; the steps themselves, from the logged step times; the
rest: start-up, imports, dataset, init, evaluations, checkpoints, pictures and the final test), median images/s,
the median share of step time spent waiting for input (`perf/data_wait_fraction`), and the final test accuracy.
BENCHMARKS.md records its figures with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vit_jax.benchmark.machine import cpu_description
from vit_jax.metric_writers import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def run(config_arg: str, seed: int, workdir: Path, data_dir: str | None) -> dict:
    arg = ",".join(filter(None, [config_arg, f"seed={seed}" if seed else ""]))
    config = "--config=configs/digits.py" + (f":{arg}" if arg else "")
    command = [sys.executable, "-m", "vit_jax.main", config, f"--workdir={workdir}"]
    if data_dir:
        command.append(f"--config.data_dir={data_dir}")
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = read_metrics(workdir)
    windows = [r for r in records if "perf/step_seconds" in r]
    steps_seconds, previous = 0.0, 0
    for r in windows:  # each window covers the steps since the previous log
        steps_seconds += r["perf/step_seconds"] * (r["step"] - previous)
        previous = r["step"]
    compile_seconds = sum(r["perf/compile_seconds"] for r in records if "perf/compile_seconds" in r)
    test = next(r for r in reversed(records) if "test/accuracy" in r)
    return {
        "command": " ".join(["python", "-m", "vit_jax.main", config, "--workdir=DIR"]),
        "seed": seed,
        "wall_seconds": round(wall, 1),
        "train_step_compile_seconds": round(compile_seconds, 1),
        "steps_seconds": round(steps_seconds, 1),
        "other_seconds": round(wall - compile_seconds - steps_seconds, 1),
        "steps": max(r["step"] for r in records),
        "median_step_seconds": round(statistics.median(r["perf/step_seconds"] for r in windows), 4),
        "median_images_per_second": round(statistics.median(r["perf/images_per_second"] for r in windows), 1),
        "median_data_wait_fraction": round(statistics.median(r["perf/data_wait_fraction"] for r in windows), 3),
        "test_accuracy": test["test/accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmark_default_run.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config-arg", default="", help="short overrides passed after configs/digits.py:")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as workdir:
            runs.append(run(args.config_arg, seed, Path(workdir), args.data_dir))
        print("  ".join(f"{key}={value}" for key, value in runs[-1].items() if key != "command"), flush=True)
    result = {"machine": cpu_description(), "runs": runs}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(result["machine"])


if __name__ == "__main__":
    main()
