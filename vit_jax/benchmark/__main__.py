"""Training and inference speed of vit_jax, optionally side by side with timm, on the hardware at hand.

    python -m vit_jax.benchmark --variants Ti/16 S/16 --modes train infer --dtypes f32 bf16 --vs-timm \\
        --out benchmark.json

Each cell (variant x batch size x dtype x mode x scan) runs in a fresh worker process with the XLA flags vit_jax
sets for its dtype (`vit_jax.xla_flags`, plus `--xla-flags`): compile, `--warmup` untimed steps, then `--steps`
timed ones (at least 10). Reported: images/s and step time (median, min, max), compile time, peak memory (XLA's
buffer assignment, the device's own peak where it has one, the process's peak RSS), FLOPs per step from XLA's cost
analysis, achieved FLOP/s and MFU against an n^3 matmul measured in the same worker on the same device and dtype
(bf16: bf16 operands, float32 accumulation), and over the timed steps the cores the worker kept busy and the share
of the machine's CPU time that other processes (`others`) and other virtual machines (`steal`) took. `--vs-timm` (needs `pip install -e ".[bench]"`) runs timm's
same-size ViT in f32 or bf16 autocast for each cell and prints vit_jax / timm images/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_jax.benchmark.machine import machine
from vit_jax.benchmark.worker import RESULT_PREFIX
from vit_jax.benchmark.workload import DTYPES, MODES, Workload
from vit_jax.models.attention import ATTENTION_IMPLS, check_attention_impl
from vit_jax.models.blas import MATMUL_IMPLS
from vit_jax.xla_flags import default_xla_flags, with_defaults

MIN_TIMED_STEPS = 10
DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["Ti/16"], help="e.g. Ti/16 S/16 B/16 (default Ti/16)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=None, help="replaces each variant's patch size")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["f32"],
                        help="f32, or bf16 computation with float32 parameters and accumulation")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--scan", choices=("off", "on", "both"), default="off", help="nn.scan over layers")
    parser.add_argument("--attention-impl", choices=ATTENTION_IMPLS, default="einsum",
                        help="attention kernel (cudnn: NVIDIA GPUs, bf16); see vit_jax.models.attention")
    parser.add_argument("--matmul", choices=MATMUL_IMPLS, default="xla",
                        help="float32 cells' dense-layer products (blas: OpenBLAS through an XLA FFI call)")
    parser.add_argument("--steps", type=int, default=MIN_TIMED_STEPS, help=f"timed steps (>= {MIN_TIMED_STEPS})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the compiling one")
    parser.add_argument("--ceiling-size", type=int, default=2048, help="n of the n x n x n matmul ceiling")
    parser.add_argument("--xla-flags", default="", help="added to XLA_FLAGS (and overriding vit_jax's defaults)")
    parser.add_argument("--vs-timm", action="store_true", help="also run timm's same-size ViT (extra: bench)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per cell")
    parser.add_argument("--out", default="benchmark.json", help="JSON results")
    args = parser.parse_args(argv)
    errors = check_args(args)
    if errors:
        parser.exit(2, "".join(f"error: {e}\n" for e in errors))
    return args


def check_args(args: argparse.Namespace) -> list[str]:
    """Every bad option, named with what was expected, before any worker starts."""
    from vit_jax.models import create_model
    from vit_jax.models.patching import grid_shape

    errors = []
    if args.steps < MIN_TIMED_STEPS:
        errors.append(f"--steps {args.steps}: at least {MIN_TIMED_STEPS} timed steps are needed for a median")
    if args.warmup < 0:
        errors.append(f"--warmup {args.warmup}: expected >= 0")
    errors += [f"--batch-sizes {b}: expected a positive integer" for b in args.batch_sizes if b <= 0]
    if args.ceiling_size <= 0 or args.timeout <= 0:
        errors.append(f"--ceiling-size {args.ceiling_size} / --timeout {args.timeout}: expected positive numbers")
    if args.xla_flags and not all(flag.startswith("--") for flag in args.xla_flags.split()):
        errors.append(f"--xla-flags {args.xla_flags!r}: expected XLA flags, each starting with --")
    try:  # written after every cell has run: a bad path must not lose them
        from vit_jax.entry import check_output

        check_output(args.out, "--out")
    except ValueError as error:
        errors.append(str(error))
    if args.image_size <= 0 or (args.patch_size is not None and args.patch_size <= 0):
        errors.append(f"--image-size {args.image_size} / --patch-size {args.patch_size}: expected positive integers")
        return errors
    for variant in variants(args):
        try:
            model = create_model(variant, num_classes=1000)
            grid_shape((args.image_size, args.image_size), model.patch_size, model.pad)
        except ValueError as error:
            errors.append(f"--variants {variant}: {error}")
    for dtype in args.dtypes:
        try:
            check_attention_impl(args.attention_impl, DTYPE_NAMES[dtype] if dtype == "bf16" else None, 0.0)
        except ValueError as error:
            errors.append(f"--attention-impl {args.attention_impl} with --dtypes {dtype}: {error}")
    if args.vs_timm and not all(importlib.util.find_spec(m) for m in ("torch", "timm")):
        errors.append('--vs-timm needs torch and timm: pip install -e ".[bench]" (the CPU build of torch)')
    return errors


def variants(args: argparse.Namespace) -> list[str]:
    if args.patch_size is None:
        return list(args.variants)
    return [f"{v.split('/')[0]}/{args.patch_size}" for v in args.variants]


def workloads(args: argparse.Namespace) -> list[Workload]:
    scans = {"off": [False], "on": [True], "both": [False, True]}[args.scan]
    return [
        Workload("vit_jax", variant, batch, args.image_size, dtype, mode, scan, args.steps, args.warmup,
                 args.ceiling_size, attention_impl=args.attention_impl,
                 matmul=args.matmul if dtype == "f32" else "xla")
        for variant in variants(args) for batch in args.batch_sizes for mode in args.modes
        for dtype in args.dtypes for scan in scans
    ]


def run_worker(workload: Workload, extra_xla_flags: str, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    if workload.side == "vit_jax":
        flags = with_defaults(" ".join([os.environ.get("XLA_FLAGS", ""), extra_xla_flags]),
                              default_xla_flags(DTYPE_NAMES[workload.dtype]))
        env["XLA_FLAGS"] = flags
        workload = dataclasses.replace(workload, xla_flags=flags)
    record = {**dataclasses.asdict(workload), "key": workload.key}
    try:
        done = subprocess.run([sys.executable, "-m", "vit_jax.benchmark.worker", json.dumps(dataclasses.asdict(workload))],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**record, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        return {**record, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return {**record, **json.loads(lines[-1][len(RESULT_PREFIX):])}


def format_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['side']:<8} {r['key']:<34} error: {r['error']}"
    # XLA's or the device's own peak where known (vit_jax), else the process's peak RSS (timm)
    peak = r.get("device_peak_bytes") or r.get("xla_peak_bytes") or r["process_peak_rss_bytes"]
    mb = peak / 2**20
    mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") else "    -"
    gflops = f"{r['achieved_flops_per_second'] / 1e9:7.1f}" if r.get("achieved_flops_per_second") else "      -"
    compile_s = f"{r['compile_seconds']:6.1f}" if r.get("compile_seconds") is not None else "     -"
    return (f"{r['side']:<8} {r['key']:<34} {r['images_per_second_median']:8.1f} "
            f"({r['images_per_second_min']:.1f}-{r['images_per_second_max']:.1f}) "
            f"{1e3 * r['step_seconds_median']:9.1f} {compile_s} {mb:8.0f} {gflops} {mfu} {format_load(r)}")


def format_load(r: dict[str, Any]) -> str:
    """Cores this side kept busy, and the machine's CPU time taken by other processes / other machines (steal):
    a cell slowed by a busy machine shows it here."""
    percent = lambda key, width: f"{100 * r[key]:{width - 1}.1f}%" if r.get(key) is not None else f"{'-':>{width}}"
    cores = f"{r['process_cores_busy']:5.2f}" if r.get("process_cores_busy") is not None else f"{'-':>5}"
    return f"{cores} {percent('other_processes_fraction', 6)} {percent('steal_fraction', 5)}"


HEADER = (f"{'side':<8} {'workload':<34} {'img/s':>8} (min-max) {'step ms':>9} {'compile':>6} {'peak MB':>8} "
          f"{'GFLOP/s':>7} {'MFU':>6} {'cores':>5} {'others':>6} {'steal':>5}")


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """vit_jax / timm images/s per cell both sides ran."""
    timm = {r["key"]: r for r in results if r["side"] == "timm" and "error" not in r}
    return {r["key"]: r["images_per_second_median"] / timm[r["key"]]["images_per_second_median"]
            for r in results if r["side"] == "vit_jax" and "error" not in r and r["key"] in timm}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m vit_jax.benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    results: list[dict[str, Any]] = []
    print(HEADER, flush=True)
    for workload in workloads(args):
        ours = run_worker(workload, args.xla_flags, args.timeout)
        results.append(ours)
        print(format_row(ours), flush=True)
        if args.vs_timm:
            theirs = run_worker(dataclasses.replace(workload, side="timm", flops=ours.get("flops_per_step")), "",
                                args.timeout)
            results.append(theirs)
            print(format_row(theirs), flush=True)
    summary = ratios(results)
    if summary:
        print("\nvit_jax / timm, images/s (same dtype: f32 vs f32, bf16 vs timm's bf16 autocast):")
        for key, ratio in summary.items():
            print(f"  {key:<34} {ratio:5.2f}x")
    kernels = {r["dtype"]: r["onednn_kernel"] for r in results if r.get("onednn_kernel")}
    if kernels:  # on a processor with AMX, whether vit_jax's products use it
        print("\noneDNN's kernel for vit_jax's dense products: "
              + ", ".join(f"{dtype} {name}" for dtype, name in kernels.items()))
    out = {"command": command, "date": datetime.date.today().isoformat(), "machine": machine(),
           "results": results, "ratios_vit_jax_over_timm": summary}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
