"""A sweep's report: one row per point and patch size, as `results.csv`, `results.md` and plots.

A point trained at one patch size gives one row; a FlexiViT point gives one row per patch size it was evaluated
at. Each row has the point's final and best eval (validation) accuracy, its test accuracy, parameter count,
tokens per image, GFLOPs per image (XLA cost analysis of the forward pass at that patch size), training images/s
(median over the logged windows) and wall time (summed over the invocations that ran it).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vit_jax.config import CONFIG_FILE, saved_config  # noqa: E402
from vit_jax.data.sources import dataset_builder, dataset_spec  # noqa: E402
from vit_jax.flexi import flexi_patch_sizes, patch_label  # noqa: E402
from vit_jax.from_config import model_from_config  # noqa: E402
from vit_jax.metric_writers import read_metrics  # noqa: E402
from vit_jax.summary import summarize  # noqa: E402
from vit_jax.sweep_points import Point, read_status  # noqa: E402

COLUMNS = ("point", "kind", "seed", "patch_size", "status", "final_eval_accuracy", "best_eval_accuracy",
           "test_accuracy", "params", "tokens_per_image", "gflops_per_image", "images_per_second", "wall_seconds",
           "error")


@dataclasses.dataclass
class PointResult:
    """What one point left on disk: its rows and its training curves."""

    rows: list[dict[str, Any]]
    curves: dict[str, list[tuple[int, float]]]  # "train/loss", "eval/accuracy" -> [(step, value)]


def point_result(point_dir: Path, name: str) -> PointResult:
    status = read_status(point_dir)
    base = {"point": name, "status": status.get("status", "pending"), "error": status.get("error") or "",
            "wall_seconds": round(status.get("wall_seconds", 0.0), 1),
            "seed": (status.get("overrides") or {}).get("seed", "")}
    if not (point_dir / CONFIG_FILE).exists():
        return PointResult([{**base, "kind": "", "patch_size": ""}], {})
    config = saved_config(point_dir)
    base["seed"] = config.seed
    records = read_metrics(point_dir)
    spec = dataset_spec(dataset_builder(config.dataset, config.data_dir))
    model = model_from_config(config, spec.num_classes)
    image_shape = (*config.image_size, spec.image_shape[-1])
    sizes = flexi_patch_sizes(config.flexi.patch_sizes) or (tuple(model.patch_size),)
    flexi = bool(config.flexi.patch_sizes)
    own = summarize(model, image_shape)
    throughput = [r["perf/images_per_second"] for r in records if "perf/images_per_second" in r]
    rows = []
    for size in sizes:
        at_size = summarize(model.clone(patch_size=size, posemb_grid=None), image_shape)
        scope = f"/p{patch_label(size)}" if flexi else ""
        eval_key, test_key = f"eval{scope}/accuracy", f"test{scope}/accuracy"
        evals = [r[eval_key] for r in records if eval_key in r and r["step"] > 0]
        tests = [r[test_key] for r in records if test_key in r]
        rows.append({
            **base,
            "kind": "FlexiViT" if flexi else "dedicated",
            "patch_size": patch_label(size),
            "final_eval_accuracy": evals[-1] if evals else "",
            "best_eval_accuracy": max(evals) if evals else "",
            "test_accuracy": tests[-1] if tests else "",
            "params": own.total_params,
            "tokens_per_image": at_size.tokens_per_image,
            "gflops_per_image": round(at_size.flops_per_image / 1e9, 6),
            "images_per_second": round(statistics.median(throughput), 1) if throughput else "",
        })
    curves = {key: [(r["step"], r[key]) for r in records if key in r] for key in ("train/loss", "eval/accuracy")}
    return PointResult(rows, curves)


def write_report(sweep_dir: Path, points: Sequence[Point]) -> list[Path]:
    """Writes results.csv, results.md and the plots; returns their paths."""
    results = {point.name: point_result(sweep_dir / point.name, point.name) for point in points}
    rows = [row for result in results.values() for row in result.rows]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(rows, sweep_dir / "results.csv"), write_markdown(rows, sweep_dir / "results.md")]
    done = [r for r in rows if r["status"] == "done" and r["final_eval_accuracy"] != ""]
    if done:
        paths += plot_accuracy_vs_patch_size(done, sweep_dir / "accuracy_vs_patch_size.png")
        paths += plot_accuracy_vs_gflops(done, sweep_dir / "accuracy_vs_gflops.png")
        paths += plot_throughput(done, sweep_dir / "throughput_vs_patch_size.png")
        paths += plot_curves(results, sweep_dir / "training_curves.png")
    return paths


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({column: row.get(column, "") for column in COLUMNS} for row in rows)
    return path


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "–"


def mean_std(values: list[float]) -> str:
    """`97.08 ± 1.37` (percent; the sample std over seeds), or the mean alone for one value."""
    if not values:
        return "–"
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def _patch_key(label: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(label).split("x")) if label else (0,)


def write_markdown(rows: list[dict], path: Path) -> Path:
    """Per patch size: mean ± std over seeds (and FlexiViT beside the dedicated models), then every row."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] == "done" and row["final_eval_accuracy"] != "":
            groups[(row["kind"], row["patch_size"])].append(row)
    kinds = sorted({kind for kind, _ in groups}, key=lambda k: k != "dedicated")
    patches = sorted({patch for _, patch in groups}, key=_patch_key)
    lines = ["# Sweep results", ""]
    if groups:
        lines += ["Accuracy in % (mean ± std over seeds): validation (final eval) and test.", ""]
        header = ["patch size", "tokens / image", "GFLOPs / image"]
        for kind in kinds:
            header += [f"{kind} val", f"{kind} test"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for patch in patches:
            some = next(r for (k, p), rs in groups.items() if p == patch for r in rs)
            cells = [patch, str(some["tokens_per_image"]), f"{some['gflops_per_image']:.4f}"]
            for kind in kinds:
                group = groups.get((kind, patch), [])
                cells += [mean_std([r["final_eval_accuracy"] for r in group]),
                          mean_std([r["test_accuracy"] for r in group if r["test_accuracy"] != ""])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| point | kind | patch | status | final val | best val | test | params | tokens | GFLOPs | "
              "train img/s | wall s |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        gflops = row.get("gflops_per_image", "")
        lines.append(
            f"| {row['point']} | {row.get('kind', '')} | {row['patch_size']} | {row['status']}"
            f"{' (' + row['error'] + ')' if row['error'] else ''} | {_percent(row.get('final_eval_accuracy'))} | "
            f"{_percent(row.get('best_eval_accuracy'))} | {_percent(row.get('test_accuracy'))} | "
            f"{row.get('params', '')} | {row.get('tokens_per_image', '')} | "
            f"{f'{gflops:.4f}' if isinstance(gflops, float) else gflops} | {row.get('images_per_second', '')} | "
            f"{row['wall_seconds']} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def _by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        kinds[row["kind"]].append(row)
    return kinds


def _patch_side(label: str) -> float:
    """`"4"` -> 4; `"4x8"` -> the side of the square of the same area (5.66)."""
    sides = _patch_key(label)
    return float(sides[0]) if len(sides) == 1 else math.prod(sides) ** 0.5


def _patch_axis(ax: Any, rows: list[dict]) -> None:
    sides = sorted({_patch_side(r["patch_size"]) for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sides, [f"{s:g}" for s in sides])
    ax.minorticks_off()
    ax.set_xlabel("patch size (pixels per side)")


def plot_accuracy_vs_patch_size(rows: list[dict], path: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, group in _by_kind(rows).items():
        xs = [_patch_side(r["patch_size"]) for r in group]
        ax.scatter(xs, [100 * r["final_eval_accuracy"] for r in group], alpha=0.5, label=f"{kind} (each seed)")
        means = _means(group, "final_eval_accuracy")
        ax.plot(list(means), [100 * v for v in means.values()], marker="o", label=f"{kind} (mean)")
    _patch_axis(ax, rows)
    return [finish_plot(fig, ax, "validation accuracy (%)", "Accuracy vs patch size", path)]


def plot_accuracy_vs_gflops(rows: list[dict], path: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, group in _by_kind(rows).items():
        points = defaultdict(list)
        for r in group:
            points[(r["gflops_per_image"], r["patch_size"])].append(r["final_eval_accuracy"])
        ordered = sorted(points.items())
        ax.plot([g for (g, _), _ in ordered], [100 * statistics.mean(v) for _, v in ordered], marker="o",
                label=kind)
        for (g, patch), values in ordered:
            ax.annotate(f"p{patch}", (g, 100 * statistics.mean(values)), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image (forward pass, XLA cost analysis)")
    return [finish_plot(fig, ax, "validation accuracy (%, mean over seeds)", "Accuracy vs compute", path)]


def plot_throughput(rows: list[dict], path: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, group in _by_kind(rows).items():
        group = [r for r in group if r["images_per_second"] != ""]
        if kind == "FlexiViT":  # one mixed-size training run: a level, not a curve
            for value in sorted({r["images_per_second"] for r in group}):
                ax.axhline(value, linestyle="--", color="gray", label="FlexiViT (sizes mixed)")
            continue
        means = _means(group, "images_per_second")
        ax.plot(list(means), list(means.values()), marker="o", label=kind)
    _patch_axis(ax, rows)
    ax.set_yscale("log")
    return [finish_plot(fig, ax, "training throughput (images/s)", "Training throughput vs patch size", path)]


def plot_curves(results: dict[str, PointResult], path: Path) -> list[Path]:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        if result.curves.get("train/loss"):
            steps, values = zip(*result.curves["train/loss"], strict=True)
            loss_ax.plot(steps, values, label=name, linewidth=1)
        if result.curves.get("eval/accuracy"):
            steps, values = zip(*result.curves["eval/accuracy"], strict=True)
            acc_ax.plot(steps, [100 * v for v in values], label=name, marker=".", linewidth=1)
    loss_ax.set(xlabel="training step", ylabel="training loss (cross-entropy, nats)", title="Training loss")
    acc_ax.set(xlabel="training step", ylabel="validation accuracy (%)", title="Validation accuracy")
    loss_ax.set_yscale("log")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7, loc="lower right")
    return [_save(fig, path)]


def _means(rows: list[dict], key: str) -> dict[float, float]:
    values: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        values[_patch_side(r["patch_size"])].append(r[key])
    return {x: statistics.mean(v) for x, v in sorted(values.items())}


def finish_plot(fig: Any, ax: Any, ylabel: str, title: str, path: Path) -> Path:
    """Labels, grid, a legend with each label once, and the file."""
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
