"""How each position encoding transfers to other resolutions: train, evaluate elsewhere, optionally fine-tune.

    python -m vit_jax.sweep --config=configs/sweeps/resolution_transfer.py[:finetune=N] --workdir=DIR [--collect]

A study config is a sweep config (`get_config`, `get_sweep`: one point per position encoding and seed, trained by
`vit_jax.sweep` in `DIR/<point>`, resumable, `--point=K` for one point per process) plus `get_study(arg)`: the
evaluation resolutions, the resize methods learned tables are evaluated with, the split, and `finetune_steps`.
After training, `vit_jax.sweep` hands every trained point to this module, which
1. evaluates the final model at each resolution without fine-tuning; a model with a learned table (`learn`,
   `factorized`, `rope_ape`) once per resize method (`posemb_resize`: the table is resized in the forward pass);
2. with `finetune_steps` > 0, fine-tunes it for that many steps at each other resolution (configs/finetune.py: the
   table resized once at load, `init.posemb_method`) in `DIR/<point>/finetune_<res>`, and evaluates that model;
3. writes `DIR/transfer.csv`, `DIR/transfer.md` (mean ± std over seeds) and `DIR/transfer_*.png` (accuracy against
   the evaluation resolution, one line per encoding and method), beside the sweep's own report.
Every result is kept in `DIR/<point>/transfer.json` as it is measured, so a study resumes point by point, result
by result.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoint.trained_model import TrainedModel, load_trained_model
from vit_jax.config import load_config_file, saved_config
from vit_jax.data.pipeline import eval_batches
from vit_jax.data.sources import dataset_builder, open_split
from vit_jax.entry import InputError
from vit_jax.models.posemb import POSEMB_RESIZE_METHODS
from vit_jax.sweep_points import Point, read_status
from vit_jax.train import train_and_evaluate

RESULTS = "transfer.json"  # in each point's folder
FINETUNE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "finetune.py"


@dataclasses.dataclass(frozen=True)
class Study:
    """What `get_study(arg)` returns: resolutions `(h, w)`, resize methods for learned tables, the split the
    accuracy is measured on, and fine-tuning steps per resolution (0: none)."""

    sizes: tuple[tuple[int, int], ...]
    methods: tuple[str, ...] = ("bilinear_align_corners", "bilinear", "bicubic")
    split: str = "test"
    finetune_steps: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in POSEMB_RESIZE_METHODS]
        if bad or not self.methods:
            raise InputError(f"study methods {self.methods}: expected some of {POSEMB_RESIZE_METHODS}")
        if not self.sizes or not all(len(s) == 2 and min(s) > 0 for s in self.sizes):
            raise InputError(f"study sizes {self.sizes}: expected (height, width) pairs of positive ints")
        if self.finetune_steps < 0:
            raise InputError(f"finetune_steps {self.finetune_steps}: expected >= 0")


def has_learned_table(trained: TrainedModel) -> bool:
    model = trained.model
    return model.posemb in ("learn", "factorized") or bool(model.rope_ape)


def accuracy(trained: TrainedModel, source: Any, size: tuple[int, int], method: str | None, batch_size: int = 256
             ) -> float:
    """Top-1 accuracy of a trained model on every image of `source`, fed at `size`; a learned table resized in
    the forward pass by `method`."""
    model = trained.model.clone(attention_impl="xla", attention_dropout_rate=0.0)  # 2x einsum's speed at 64x64
    model = model if method is None else model.clone(posemb_resize=method)
    preprocess = dataclasses.replace(trained.preprocess, image_size=tuple(size))
    predict = jax.jit(lambda params, images: jnp.argmax(model.apply({"params": params}, images, train=False), -1))
    correct = count = 0
    for batch in eval_batches(source, preprocess, batch_size=batch_size):
        hits = np.asarray(predict(trained.params, batch["image"])) == batch["label"]
        correct += int(np.sum(hits * batch["mask"]))
        count += int(np.sum(batch["mask"]))
    return correct / count


def evaluate_point(point_dir: Path, study: Study) -> list[dict[str, Any]]:
    """Measures (or reads back) the point's results; new ones are saved one by one."""
    path = point_dir / RESULTS
    results = json.loads(path.read_text()) if path.exists() else []
    done = {(tuple(r["size"]), r["method"], r["finetuned"]) for r in results}
    config, trained = saved_config(point_dir), load_trained_model(workdir=point_dir)
    source = open_split(dataset_builder(config.dataset, config.get("data_dir")), study.split)
    methods = study.methods if has_learned_table(trained) else (None,)
    for size in study.sizes:
        for method in methods:
            if (tuple(size), method, False) not in done:
                results.append(dict(size=list(size), method=method, finetuned=False,
                                    accuracy=accuracy(trained, source, size, method)))
                path.write_text(json.dumps(results, indent=2) + "\n")
    for size in study.sizes if study.finetune_steps else ():
        if tuple(size) == tuple(config.image_size) or (tuple(size), "finetuned", True) in done:
            continue
        tuned = load_trained_model(workdir=finetune(point_dir, tuple(size), study.finetune_steps))
        results.append(dict(size=list(size), method="finetuned", finetuned=True,
                            accuracy=accuracy(tuned, source, size, None)))
        path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def finetune(point_dir: Path, size: tuple[int, int], steps: int) -> Path:
    """configs/finetune.py from the point's workdir at `size` for `steps` steps (resumes a started one)."""
    folder = point_dir / f"finetune_{size[0]}x{size[1]}"
    config = load_config_file(FINETUNE_CONFIG, f"init={point_dir},res={size[0]},steps={steps}")
    config.image_size = size
    config.model.posemb_grid = None  # fine-tuned at `size`'s grid: a learned table is resized once, at load
    config.log_pictures = "none"
    train_and_evaluate(config, folder)
    return folder


def study_rows(sweep_dir: Path, points: Sequence[Point]) -> list[dict[str, Any]]:
    rows = []
    for point in points:
        path = sweep_dir / point.name / RESULTS
        if read_status(sweep_dir / point.name).get("status") != "done" or not path.exists():
            continue
        for result in json.loads(path.read_text()):
            rows.append(dict(point=point.name, posemb=encoding_label(point.overrides), seed=point.overrides.get(
                "seed", 0), method=result["method"] or "", resolution="x".join(map(str, result["size"])),
                             finetuned=result["finetuned"], accuracy=result["accuracy"]))
    return rows


def encoding_label(overrides: dict[str, Any]) -> str:
    """`learn`, `rope_mixed`, ... (with `+ape` for RoPE plus a learned table)."""
    label = str(overrides.get("model.posemb", "learn"))
    return label + ("+ape" if overrides.get("model.rope_ape") else "")


def study_of(module: Any, arg: str | None) -> Study | None:
    """The study a sweep config describes (`get_study`), checked; None for a plain sweep."""
    return Study(**module.get_study(arg)) if hasattr(module, "get_study") else None


def write_report(sweep_dir: Path, points: Sequence[Point]) -> list[Path]:
    rows = study_rows(sweep_dir, points)
    if not rows:
        return []
    columns = ("point", "posemb", "seed", "method", "resolution", "finetuned", "accuracy")
    with (sweep_dir / "transfer.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paths = [sweep_dir / "transfer.csv", write_markdown(rows, sweep_dir / "transfer.md")]
    for finetuned in (False, True):
        if any(r["finetuned"] == finetuned for r in rows):
            paths.append(plot(rows, finetuned, sweep_dir / f"transfer_{'finetuned' if finetuned else 'direct'}.png"))
    return paths


def _side(resolution: str) -> int:
    return int(resolution.split("x")[0])


def _grouped(rows: list[dict], finetuned: bool) -> dict[str, dict[str, list[float]]]:
    """line label (encoding, method) -> resolution -> accuracies over seeds."""
    lines: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["finetuned"] == finetuned:
            label = r["posemb"] + (f" ({r['method']})" if r["method"] and not finetuned else "")
            lines[label][r["resolution"]].append(r["accuracy"])
    return lines


def write_markdown(rows: list[dict], path: Path) -> Path:
    """One table per mode (evaluated directly / after fine-tuning): encodings by rows, resolutions by columns."""
    from vit_jax.sweep_report import mean_std

    lines = []
    for finetuned, title in ((False, "Evaluated at each resolution, no fine-tuning"),
                             (True, "After fine-tuning at each resolution")):
        grouped = _grouped(rows, finetuned)
        if not grouped:
            continue
        resolutions = sorted({r["resolution"] for r in rows}, key=_side)
        lines += [f"### {title} (top-1 %, mean ± std over seeds)", "",
                  "| encoding | " + " | ".join(resolutions) + " |", "|---|" + "---:|" * len(resolutions)]
        for label, by_res in grouped.items():
            lines.append(f"| {label} | " + " | ".join(mean_std(by_res[r]) if by_res.get(r) else "–"
                                                      for r in resolutions) + " |")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def plot(rows: list[dict], finetuned: bool, path: Path) -> Path:
    """Accuracy (mean over seeds) against the evaluation resolution's side, one line per encoding and method."""
    import matplotlib.pyplot as plt

    from vit_jax.sweep_report import finish_plot

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, by_res in _grouped(rows, finetuned).items():
        sides = sorted(by_res, key=_side)
        ax.plot([_side(s) for s in sides], [100 * statistics.mean(by_res[s]) for s in sides], marker="o",
                label=label, linestyle="--" if label.endswith(("corners)", "bicubic)")) else "-")
    ax.set_xlabel("evaluation resolution (side, pixels)")
    title = "after fine-tuning at each resolution" if finetuned else "evaluated without fine-tuning"
    return finish_plot(fig, ax, "top-1 test accuracy (%, mean over seeds)", title, path)
