"""Evaluation: loss, top-1 and top-5 accuracy over every example of a split, exactly once across processes.

One `Evaluator` serves every kind of run: a fixed-grid model, a FlexiViT model at each of its patch sizes, a model
evaluated at extra resolutions (its position table resized at run time), and a packed NaViT run. The final test
is `final_test`, printed and logged once at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from vit_jax.data import pipeline
from vit_jax.data.packing import PackedPreprocess, packed_eval_batches
from vit_jax.data.preprocessing import Preprocess
from vit_jax.extra_evals import ExtraEval
from vit_jax.fewshot import fewshot_accuracy
from vit_jax.flexi import patch_label
from vit_jax.metric_writers import MetricWriter
from vit_jax.sharding import to_global


def metrics_over_batches(
    eval_step: Callable, params: Any, batches: Iterable[dict[str, np.ndarray]], sharding: NamedSharding, prefix: str,
    *, top5: bool = True, patch_size: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Loss, top-1 (and top-5) accuracy over every real example of `batches` (at `patch_size`, for FlexiViT)."""
    totals = None
    for batch in batches:
        sums = eval_step(params, to_global(batch, sharding), patch_size)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    metrics = {f"{prefix}/loss": float(totals["loss"]) / count, f"{prefix}/accuracy": float(totals["top1"]) / count,
               f"{prefix}/num_examples": count}
    if top5:
        metrics[f"{prefix}/top5_accuracy"] = float(totals["top5"]) / count
    if "real_count" in totals:  # ReaL labels (`steps.make_scored_eval_step`)
        real = float(totals["real_count"])
        metrics[f"{prefix}/real_num_examples"] = real
        if real:
            metrics[f"{prefix}/real_accuracy"] = float(totals["real_top1"]) / real
    return metrics


def in_step(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches whose number differs between processes (packing): every process runs a step while
    any has a batch left, with all-padding (mask 0) batches where it has none. One tiny all-gather per step."""
    if jax.process_count() == 1:
        yield from batches
        return
    iterator, empty = iter(batches), None
    while True:
        batch = next(iterator, None)
        if batch is not None:
            empty = {key: np.zeros_like(value) for key, value in batch.items()}
        if not multihost_utils.process_allgather(np.int32(batch is not None)).any():
            return
        if batch is None and empty is None:
            raise RuntimeError("this process has no evaluation images to shape an empty batch on; use a split "
                               "with at least one image per process")
        yield batch if batch is not None else empty


@dataclasses.dataclass
class Evaluator:
    """A run's evaluation: its compiled eval step, its splits and how their batches are made."""

    eval_step: Callable  # jit-compiled `vit_jax.steps.make_eval_step`
    sources: dict[str, Any]  # split field ("eval_split", "test_split") -> random-access source
    preprocess: Preprocess
    data_sharding: NamedSharding
    batch_size: int  # global
    num_classes: int
    num_threads: int = 2
    flexi_sizes: tuple[tuple[int, int], ...] = ()  # FlexiViT: evaluated at each patch size
    image_sizes: tuple[tuple[int, int], ...] = ()  # extra resolutions
    packed: PackedPreprocess | None = None  # NaViT: images at their own sizes, packed into sequences
    seq_len: int = 0  # packed runs: tokens per sequence
    max_images: int = 0  # packed runs: images per sequence
    extra: dict[str, ExtraEval] = dataclasses.field(default_factory=dict)  # other datasets, at every evaluation
    # name -> jit-compiled `vit_jax.steps.make_scored_eval_step` on that dataset's columns: (params, batch) -> sums
    extra_steps: dict[str, Callable] = dataclasses.field(default_factory=dict)
    representation_step: Callable | None = None  # jit-compiled `make_representation_step`, for few-shot ones

    def extra_metrics(self, params: Any) -> dict[str, float]:
        """Metrics on each extra dataset (`NAME/accuracy`, ...; `NAME/10shot_accuracy`, ... for a few-shot one;
        `vit_jax.extra_evals`), at the model's own size."""
        metrics = {}
        for name, extra in self.extra.items():
            view = extra.view(self.preprocess)
            if extra.fewshot is not None:
                few = extra.fewshot
                (train, train_labels), (test, test_labels) = (self._representations(params, source, view)
                                                              for source in (few.source, extra.source))
                results = fewshot_accuracy(train, train_labels, test, test_labels, few.num_classes, few.shots,
                                           few.seeds, few.l2_reg)
                metrics.update({f"{name}/{r.shots}shot_accuracy": r.top1 for r in results})
                continue
            step = lambda params, batch, _, name=name: self.extra_steps[name](params, batch)  # noqa: E731
            batches = pipeline.eval_batches(extra.source, view, **self._shard())
            metrics.update(metrics_over_batches(step, params, batches, self.data_sharding, name,
                                                top5=len(extra.classes.columns) > 5))
        return metrics

    def _representations(self, params: Any, source: Any, view: Any) -> tuple[np.ndarray, np.ndarray]:
        """Every example's representation and label, in the source's order on any number of processes."""
        shard = self._shard()
        batches = pipeline.eval_batches(source, view, **shard)
        return pipeline.rows_in_source_order(
            batches, lambda batch: self.representation_step(params, to_global(batch, self.data_sharding)),
            shard["batch_size"], jax.process_count())

    def _shard(self) -> dict[str, int]:
        return dict(batch_size=self.batch_size // jax.process_count(), process_index=jax.process_index(),
                    process_count=jax.process_count(), num_threads=self.num_threads)

    def split_metrics(self, params: Any, split_field: str, prefix: str) -> dict[str, float]:
        """Metrics on a split; a FlexiViT model is evaluated at every patch size (`eval/p4/accuracy`, ...), and
        `eval/accuracy` (which picks the best checkpoint) is their mean. Extra resolutions add metrics
        (`eval/r24/accuracy`, ...), the same model resizing its position table at run time."""
        metrics = self._at_patch_sizes(params, split_field, prefix)
        for size in self.image_sizes:
            preprocess = dataclasses.replace(self.preprocess, image_size=size)
            metrics.update(self._at(params, split_field, f"{prefix}/r{patch_label(size)}", None, preprocess))
        return metrics

    def _at_patch_sizes(self, params: Any, split_field: str, prefix: str) -> dict[str, float]:
        if not self.flexi_sizes:
            return self._at(params, split_field, prefix, None)
        metrics = {}
        for size in self.flexi_sizes:
            metrics.update(self._at(params, split_field, f"{prefix}/p{patch_label(size)}", size))
        for name in ("loss", "accuracy", "top5_accuracy"):
            values = [metrics[f"{prefix}/p{patch_label(size)}/{name}"] for size in self.flexi_sizes
                      if f"{prefix}/p{patch_label(size)}/{name}" in metrics]
            if values:
                metrics[f"{prefix}/{name}"] = float(np.mean(values))
        metrics[f"{prefix}/num_examples"] = metrics[f"{prefix}/p{patch_label(self.flexi_sizes[0])}/num_examples"]
        return metrics

    def _at(self, params: Any, split_field: str, prefix: str, patch_size: tuple[int, int] | None,
            preprocess: Preprocess | None = None) -> dict[str, float]:
        shard = self._shard()
        if self.packed is not None:
            batches = in_step(packed_eval_batches(self.sources[split_field], self.packed, seq_len=self.seq_len,
                                                  max_images=self.max_images, **shard))
        else:
            batches = pipeline.eval_batches(self.sources[split_field], preprocess or self.preprocess, **shard)
        return metrics_over_batches(self.eval_step, params, batches, self.data_sharding, prefix,
                                    top5=self.num_classes > 5, patch_size=patch_size)


def final_test(evaluator: Evaluator, params: Any, step: int, writer: MetricWriter, description: str,
               ema: Any = None) -> dict[str, float]:
    """The one evaluation on the test split, at the end; printed and logged. `description`: what the split is,
    e.g. "sklearn_digits test". `ema`: a moving average of the weights, tested too (`test_ema/*`)."""
    test = evaluator.split_metrics(params, "test_split", "test")
    writer.write(step, test)
    count = int(test["test/num_examples"])
    for size in evaluator.flexi_sizes:
        label = patch_label(size)
        writer.print(f"test accuracy at patch size {label}: {100 * test[f'test/p{label}/accuracy']:.2f}%")
    for size in evaluator.image_sizes:
        label = patch_label(size)
        writer.print(f"test accuracy at {size[0]}x{size[1]} px: {100 * test[f'test/r{label}/accuracy']:.2f}%")
    mean = " (mean over the patch sizes)" if evaluator.flexi_sizes else ""
    writer.print(f"final test accuracy: {100 * test['test/accuracy']:.2f}%{mean} on {count} {description} images "
                 f"(step {step})")
    if ema is None:
        return test
    averaged = evaluator.split_metrics(ema, "test_split", "test_ema")
    writer.write(step, averaged)
    writer.print(f"final test accuracy of the weights' moving average (EMA): {100 * averaged['test_ema/accuracy']:.2f}%")
    return {**test, **averaged}
