"""Metrics to TensorBoard event files (tensorboardX), `metrics.jsonl`, and a console progress bar.

No TensorFlow (clu's writers need it). Only process 0 writes; on other processes every method is a no-op.
On resume, lines of `metrics.jsonl` and TensorBoard events after the restored step are dropped, so curves
have no duplicated stretch from the part of the killed run that was redone.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import tqdm


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch: `tensorboardX.writer` imports torch whenever it is
    installed (1.5 s of every run's start-up) only to accept torch tensors, and vit_jax logs floats and arrays."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects without torch
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _summary_writer_class()
METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str | Path) -> list[dict]:
    """All records of `workdir/metrics.jsonl`, in order."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drop_records_after(path: Path, step: int) -> None:
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


class MetricWriter:
    """Writes scalars at a step to all three sinks; `advance` moves the progress bar."""

    def __init__(self, workdir: str | Path, *, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self._path = Path(workdir) / METRICS_FILE
        self._path.parent.mkdir(parents=True, exist_ok=True)
        _drop_records_after(self._path, start_step)
        self._tensorboard = SummaryWriter(str(workdir), purge_step=start_step or None)
        self._progress = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr,
                                   dynamic_ncols=True, mininterval=1.0)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {key: float(value) for key, value in metrics.items()}
        with self._path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}) + "\n")
        for key, value in clean.items():
            self._tensorboard.add_scalar(key, value, step)
        self._tensorboard.flush()
        shown = {k.split("/", 1)[-1] if k.startswith("train/") else k: v for k, v in clean.items()
                 if k in ("train/loss", "train/accuracy", "eval/accuracy", "eval_ema/accuracy")}
        self._progress.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """`(H, W, 3)` uint8 pictures as TensorBoard images (tag `pictures/<name>`)."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tensorboard.add_image(f"pictures/{name}", image, step, dataformats="HWC")
        self._tensorboard.flush()

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self._progress.update(steps)

    def print(self, message: str) -> None:
        """A line on the console that does not break the progress bar."""
        if self.enabled:
            self._progress.write(message, file=sys.stdout)

    def close(self) -> None:
        if self.enabled:
            self._progress.close()
            self._tensorboard.close()
