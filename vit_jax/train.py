"""`train_and_evaluate(config, workdir)`: train a ViT from a config, evaluate, log, checkpoint, resume.

config -> checks (before anything compiles) -> data + model -> sharded state -> jit train step -> metrics and
checkpoints. Running it again on the same workdir resumes from the latest checkpoint, data position included.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from vit_jax import config_validation
from vit_jax.checkpoint.adapt import Adaptation, fill_from_init, plan_adaptation
from vit_jax.checkpoint.manager import CHECKPOINT_DIR, TrainCheckpoints
from vit_jax.checkpoint.npz import NpzError
from vit_jax.checkpoint.pretrained import load_pretrained
from vit_jax.config import save_config
from vit_jax.data import pipeline
from vit_jax.data.packing import PackedPreprocess, empty_sequences, packed_eval_batches, packed_train_iterator
from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import InMemorySource, fits_in_memory, open_split
from vit_jax.flexi import draw_patch_size, flexi_patch_sizes, flexi_probabilities, patch_label
from vit_jax.interpret.tensorboard import PictureLogger, first_examples
from vit_jax.metric_writers import MetricWriter
from vit_jax.models.partitioning import ActivationSharding
from vit_jax.models.vit import VisionTransformer, input_grid
from vit_jax.optim import learning_rate_schedule, make_optimizer
from vit_jax.preemption import PreemptionWatcher
from vit_jax.sharding import (
    DATA_AXIS,
    MODEL_AXIS,
    ShardingError,
    batch_sharding,
    make_mesh,
    mirrored_shardings,
    replicated,
    tree_shardings,
)

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops without saving the broken state."""


class Preempted(RuntimeError):
    """SIGTERM arrived; the state was saved and the run stopped so that running it again resumes."""


# ---------------------------------------------------------------------------------------------------------------
# Steps


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels, in float32."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


PACKED_INPUTS = ("patches", "image_ids", "coords", "image_grids")  # NaViT's inputs, in its argument order


def model_args(batch: Batch) -> tuple[jax.Array, ...]:
    """The model's positional inputs in a batch: the images, or a packed batch's sequences (NaViT)."""
    return tuple(batch[key] for key in PACKED_INPUTS) if "patches" in batch else (batch["image"],)


def classification_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array, label_smoothing: float = 0.0
                        ) -> dict[str, jax.Array]:
    """Weighted sums of loss, top-1 and top-5 hits, and the weight, over every prediction: logits `labels.shape +
    (classes,)`, one row per image (a packed batch has K image slots per sequence, weight 0 for empty ones)."""
    logits = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32)
    labels, weights = labels.reshape(-1), weights.reshape(-1).astype(jnp.float32)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": jnp.sum(cross_entropy(logits, labels, label_smoothing) * weights),
        "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * weights),
        "count": jnp.sum(weights),
    }


def make_train_step(
    model: VisionTransformer,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    dropout_key: jax.Array,
    accum_steps: int = 1,
    label_smoothing: float = 0.0,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer update on a global batch. The dropout key is folded from the step number, so a step's
    randomness does not depend on history (and a resumed run repeats it exactly). With `accum_steps > 1` the batch
    is cut into micro-batches `batch[i::accum_steps]` (every device keeps an equal share of each), whose gradients
    are averaged: the same update as one big batch, in less memory. A packed batch's loss is the mean over its
    real images (`mask`)."""

    def loss_and_grads(params: Any, batch: Batch, rng: jax.Array, patch_size: Any):
        def loss_fn(p):
            flexi = {} if patch_size is None else {"patch_size": patch_size}
            logits = model.apply({"params": p}, *model_args(batch), train=True, rngs={"dropout": rng}, **flexi)
            weights = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
            sums = classification_sums(logits, batch["label"], weights, label_smoothing)
            count = jnp.maximum(sums["count"], 1.0)
            return sums["loss"] / count, sums["top1"] / count

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, accuracy, grads

    def micro_batches(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS)))
        return x

    def accumulated(params: Any, batch: Batch, rng: jax.Array, patch_size: Any):
        def body(carry, micro):
            index, micro_batch = micro
            loss, accuracy, grads = loss_and_grads(params, micro_batch, jax.random.fold_in(rng, index), patch_size)
            return jax.tree.map(jnp.add, carry, (loss, accuracy, grads)), None

        zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        micro = (jnp.arange(accum_steps), jax.tree.map(micro_batches, batch))
        totals, _ = jax.lax.scan(body, zeros, micro)
        return jax.tree.map(lambda t: t / accum_steps, totals)

    def train_step(state: TrainState, batch: Batch, patch_size: Any = None
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(dropout_key, state.step)
        if accum_steps == 1:
            loss, accuracy, grads = loss_and_grads(state.params, batch, rng, patch_size)
        else:
            loss, accuracy, grads = accumulated(state.params, batch, rng, patch_size)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
        metrics = {
            "train/loss": loss,
            "train/accuracy": accuracy,
            "train/grad_norm": optax.tree.norm(grads),
            "train/learning_rate": schedule(state.step),
        }
        if "image_ids" in batch:  # how full the packed sequences are
            metrics["train/padding_fraction"] = jnp.mean(batch["image_ids"] == 0)
            metrics["train/images_per_sequence"] = jnp.mean(jnp.sum(batch["mask"], axis=-1))
        return new_state, metrics

    return train_step


def make_eval_step(model: VisionTransformer) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Sums over the real (mask = 1) examples of a batch: loss, top-1 and top-5 hits, count."""

    def eval_step(params: Any, batch: Batch, patch_size: Any = None) -> dict[str, jax.Array]:
        flexi = {} if patch_size is None else {"patch_size": patch_size}
        logits = model.apply({"params": params}, *model_args(batch), train=False, **flexi)
        return classification_sums(logits, batch["label"], batch["mask"])

    return eval_step


# ---------------------------------------------------------------------------------------------------------------
# Set-up


@dataclasses.dataclass
class Setup:
    """Everything a run needs, validated and built before anything compiles."""

    config: ConfigDict
    mesh: Mesh
    model: VisionTransformer
    grid: tuple[int, ...]  # the model's token grid at config.image_size: (gh, gw), or (gt, gh, gw) for videos
    num_classes: int
    image_shape: tuple[int, ...]  # one model input: (H, W, C), or (T, H, W, C) for videos
    sources: dict[str, Any]  # split field ("train_split", ...) -> random-access source
    preprocess: Preprocess
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    flexi_sizes: tuple[tuple[int, int], ...] = ()  # FlexiViT patch sizes; () trains at the model's own
    flexi_probabilities: np.ndarray | None = None
    packed: PackedPreprocess | None = None  # NaViT runs: images at their own sizes, packed into sequences
    eval_image_sizes: tuple[tuple[int, int], ...] = ()  # extra evaluation resolutions


def set_up(config: ConfigDict, devices: list[jax.Device] | None = None) -> Setup:
    """Checks the config against itself, the devices and the dataset, then builds data sources, model and
    optimizer. Raises `ConfigError` (one line) on the first problem; nothing is compiled yet."""
    devices = jax.devices() if devices is None else devices
    config_validation.check_choices(config)
    config_validation.check_numbers(config)
    config_validation.check_patterns(config)
    config_validation.check_devices(config, len(devices), jax.process_count())
    config_validation.check_init(config)
    builder, spec, sizes = config_validation.check_data(config)
    model = config_validation.check_model(config, spec.num_classes)
    config_validation.check_video(config, spec, model)
    image_shape = (*spec.image_shape[:-3], *tuple(config.image_size), spec.image_shape[-1])  # frames resized

    sources = {}
    for field in sizes:
        source = open_split(builder, config[field])
        cache = config.cache_in_memory
        if cache is True or (cache == "auto" and fits_in_memory(spec, sizes[field])):
            source = InMemorySource(source)
        sources[field] = source
    packed = config_validation.packed_preprocess_from_config(config, model) if config.packing.enabled else None
    mesh = make_mesh(config.mesh, devices)
    if mesh.size > 1:  # keep activations split the way parameters and batches are
        model = model.clone(activation_sharding=ActivationSharding(
            mesh, DATA_AXIS, MODEL_AXIS if mesh.shape.get(MODEL_AXIS, 1) > 1 else None))
    return Setup(
        config=config,
        mesh=mesh,
        model=model,
        grid=tuple(model.posemb_grid or (1, 1)) if packed else input_grid(model, image_shape),
        num_classes=spec.num_classes,
        image_shape=image_shape,
        sources=sources,
        preprocess=config_validation.preprocess_from_config(config),
        tx=make_optimizer(config.optimizer, config.num_steps),
        schedule=learning_rate_schedule(config.optimizer, config.num_steps),
        flexi_sizes=flexi_patch_sizes(config.flexi.patch_sizes),
        flexi_probabilities=flexi_probabilities(flexi_patch_sizes(config.flexi.patch_sizes),
                                                config.flexi.probabilities) if config.flexi.patch_sizes else None,
        packed=packed,
        eval_image_sizes=tuple(tuple(size) for size in config.eval_image_sizes),
    )


def init_state_fn(setup: Setup, key: jax.Array) -> Callable[[], TrainState]:
    def init() -> TrainState:
        if setup.packed is None:
            example = {"image": jnp.zeros((1, *setup.image_shape), jnp.float32)}
        else:
            packing = setup.config.packing
            example = empty_sequences(1, seq_len=packing.seq_len, max_images=packing.max_images,
                                      patch_dim=math.prod(setup.packed.patch_size) * setup.image_shape[-1])
        params = setup.model.init(key, *model_args(example), train=False)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=setup.tx.init(params))

    return init


def plan_init(setup: Setup, abstract_params: Any) -> Adaptation:
    """Loads `config.init.path` and fits it to the model's parameter shapes; every mismatch is raised here,
    before anything compiles."""
    init = setup.config.init
    try:
        pretrained = load_pretrained(init.path, init.step)
    except FileNotFoundError as error:
        raise config_validation.field_error("init.step", init.step, str(error)) from None
    except NpzError as error:
        raise config_validation.field_error("init.path", init.path, str(error)) from None
    return plan_adaptation(
        pretrained.params, abstract_params, old_grid=init.grid or pretrained.grid, new_grid=setup.grid,
        dont_load=tuple(init.dont_load), head=init.head, posemb=init.posemb, posemb_method=init.posemb_method,
        posemb_antialias=init.posemb_antialias, inflation=init.inflation,
    )


def start_from(adaptation: Adaptation, fresh: TrainState, tx: optax.GradientTransformation,
               shardings: TrainState) -> TrainState:
    """Step 0 with the adapted parameters (the rest from `fresh`) and a fresh optimizer state."""
    params = fill_from_init(adaptation, jax.device_get(fresh.params))
    new_state = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))
    return jax.jit(new_state, in_shardings=(shardings.params,), out_shardings=shardings)(params)


def state_shardings(abstract_state: TrainState, config: ConfigDict, mesh: Mesh) -> TrainState:
    """Parameters by `config.sharding_rules`, optimizer state like the parameters it mirrors, the step replicated.
    A rule that cannot apply (a split that does not divide a dimension) is a ConfigError."""
    try:
        params = tree_shardings(abstract_state.params, config.sharding_rules, mesh, config.fsdp_min_size)
    except ShardingError as error:
        raise config_validation.field_error("sharding_rules", tuple(config.sharding_rules), str(error)) from None
    return TrainState(
        step=replicated(mesh),
        params=params,
        opt_state=mirrored_shardings(abstract_state.opt_state, params, abstract_state.params, mesh),
    )


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> Batch:
    """This process's slice of the batch -> arrays of the global batch, split over the `data` axis."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def evaluate(
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
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class Run:
    """The compiled steps of a run, its data and where it writes."""

    setup: Setup
    train_step: Callable
    eval_step: Callable
    train_data: Any  # grain iterator, checkpointed with the state
    data_sharding: NamedSharding
    checkpoints: TrainCheckpoints
    writer: MetricWriter
    pictures: PictureLogger
    start_step: int = 0  # where this invocation started, and
    start_examples: int = 0  # the examples of the global training stream consumed by then

    def save(self, step: int, state: TrainState, metrics: dict[str, float] | None = None) -> None:
        """Checkpoints `step` with where the data stands: the examples of the global stream consumed, which any
        process count resumes from. A packed run's position is its packers' state: grain's, per process."""
        config = self.setup.config
        position = {"step": step, "process_count": jax.process_count(), "global_batch_size": config.batch_size}
        if self.setup.packed is None:
            position["examples"] = self.start_examples + (step - self.start_step) * config.batch_size
        packers = self.train_data if self.setup.packed is not None else None
        self.checkpoints.save(step, state, packers, metrics=metrics, position=position)

    def evaluate(self, params: Any, split_field: str, prefix: str) -> dict[str, float]:
        """Metrics on a split; a FlexiViT model is evaluated at every patch size (`eval/p4/accuracy`, ...), and
        `eval/accuracy` (which picks the best checkpoint) is their mean. `config.eval_image_sizes` adds metrics at
        other resolutions (`eval/r24/accuracy`, ...), the same model resizing its position table at run time."""
        metrics = self._evaluate_patch_sizes(params, split_field, prefix)
        for size in self.setup.eval_image_sizes:
            preprocess = dataclasses.replace(self.setup.preprocess, image_size=size)
            metrics.update(self._evaluate_at(params, split_field, f"{prefix}/r{patch_label(size)}", None, preprocess))
        return metrics

    def _evaluate_patch_sizes(self, params: Any, split_field: str, prefix: str) -> dict[str, float]:
        if not self.setup.flexi_sizes:
            return self._evaluate_at(params, split_field, prefix, None)
        metrics = {}
        for size in self.setup.flexi_sizes:
            metrics.update(self._evaluate_at(params, split_field, f"{prefix}/p{patch_label(size)}", size))
        for name in ("loss", "accuracy", "top5_accuracy"):
            values = [metrics[f"{prefix}/p{patch_label(size)}/{name}"] for size in self.setup.flexi_sizes
                      if f"{prefix}/p{patch_label(size)}/{name}" in metrics]
            if values:
                metrics[f"{prefix}/{name}"] = float(np.mean(values))
        metrics[f"{prefix}/num_examples"] = metrics[f"{prefix}/p{patch_label(self.setup.flexi_sizes[0])}/num_examples"]
        return metrics

    def _evaluate_at(self, params: Any, split_field: str, prefix: str, patch_size: tuple[int, int] | None,
                     preprocess: Preprocess | None = None) -> dict[str, float]:
        config = self.setup.config
        if self.setup.packed is not None:
            batches = in_step(packed_eval_batches(
                self.setup.sources[split_field], self.setup.packed, batch_size=config.eval_batch_size //
                jax.process_count(), seq_len=config.packing.seq_len, max_images=config.packing.max_images,
                process_index=jax.process_index(), process_count=jax.process_count(), num_threads=config.data_threads,
            ))
            return evaluate(self.eval_step, params, batches, self.data_sharding, prefix,
                            top5=self.setup.num_classes > 5)
        batches = pipeline.eval_batches(
            self.setup.sources[split_field], preprocess or self.setup.preprocess,
            batch_size=config.eval_batch_size // jax.process_count(), process_index=jax.process_index(),
            process_count=jax.process_count(), num_threads=config.data_threads,
        )
        return evaluate(self.eval_step, params, batches, self.data_sharding, prefix,
                        top5=self.setup.num_classes > 5, patch_size=patch_size)


def train_and_evaluate(config: ConfigDict, workdir: str | Path, devices: list[jax.Device] | None = None
                       ) -> dict[str, float]:
    """Trains (or resumes) to `config.num_steps`, evaluating on `eval_split`, then tests once on `test_split`.
    Returns the last eval metrics of this invocation and the test metrics. `devices`: the devices of the mesh
    (default: all of them, on every process)."""
    workdir = Path(workdir)
    setup = set_up(config, devices)
    root_key = jax.random.key(config.seed)
    init = init_state_fn(setup, jax.random.fold_in(root_key, 0))
    abstract_state = jax.eval_shape(init)
    shardings = state_shardings(abstract_state, config, setup.mesh)
    checkpoints = TrainCheckpoints(workdir / CHECKPOINT_DIR, keep=config.keep)
    start_step = checkpoints.latest_step() or 0
    start_examples = resumed_examples(checkpoints, start_step, setup)
    adaptation = plan_init(setup, abstract_state.params) if config.init.path and not start_step else None
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        save_config(config, workdir)

    data_sharding = batch_sharding(setup.mesh)
    train_data = train_iterator(setup, start_examples)
    if start_step:
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state,
                                shardings)
        state = checkpoints.restore(start_step, abstract, train_data if setup.packed is not None else None)
    else:
        state = jax.jit(init, out_shardings=shardings)()
        if adaptation is not None:
            state = start_from(adaptation, state, setup.tx, shardings)

    writer = MetricWriter(workdir, total_steps=config.num_steps, start_step=start_step,
                          enabled=jax.process_index() == 0)
    picture_images = np.zeros((0,))  # only process 0 draws
    if config.log_pictures != "none" and jax.process_index() == 0:
        picture_images = first_examples(setup.sources["eval_split"], setup.preprocess, config.pictures_images)
    run = Run(
        setup=setup,
        train_step=jax.jit(
            make_train_step(setup.model, setup.tx, setup.schedule, dropout_key=jax.random.fold_in(root_key, 1),
                            accum_steps=config.accum_steps, label_smoothing=config.label_smoothing, mesh=setup.mesh),
            in_shardings=(shardings, data_sharding),
            out_shardings=(shardings, replicated(setup.mesh)),
            static_argnums=(2,),  # patch_size: one compiled step per FlexiViT patch size
            donate_argnums=(0,),
        ),
        eval_step=jax.jit(make_eval_step(setup.model), in_shardings=(shardings.params, data_sharding),
                          out_shardings=replicated(setup.mesh), static_argnums=(2,)),
        train_data=train_data,
        data_sharding=data_sharding,
        checkpoints=checkpoints,
        writer=writer,
        pictures=PictureLogger(setup.model, picture_images, tuple(config.pp.value_range), config.log_pictures,
                               writer),
        start_step=start_step,
        start_examples=start_examples,
    )
    if start_step:
        run.writer.print(f"resumed from step {start_step} in {checkpoints.directory}")
    try:
        if adaptation is not None:
            for note in adaptation.notes:
                run.writer.print(f"init from {config.init.path}: {note}")
            run.writer.write(0, run.evaluate(state.params, "eval_split", "eval"))  # before any fine-tuning step
        with PreemptionWatcher() as preemption:
            state, results = train_loop(run, state, start_step, preemption)
        if config.test_split:
            results.update(final_test(run, state))
    finally:
        checkpoints.wait()
        checkpoints.close()
        run.writer.close()
    return results


def resumed_examples(checkpoints: TrainCheckpoints, step: int, setup: Setup) -> int:
    """Examples of the global training stream consumed by checkpoint `step` (0 for a new run). A packed run
    restores its packers' per-process state instead, so only onto the process count that saved it."""
    if not step:
        return 0
    saved = checkpoints.position(step) or {}
    if setup.packed is not None:
        count = saved.get("process_count", jax.process_count())
        if count != jax.process_count():
            raise config_validation.ConfigError(
                f"checkpoint step {step} in {checkpoints.directory} was saved by {count} processes and this run has "
                f"{jax.process_count()}: a packed (NaViT) run's data position is each process's packer state, "
                f"restorable only onto {count} processes. Run with {count} processes, or fine-tune from it in a new "
                f"workdir (config.init.path)")
        return 0
    # Checkpoints from before positions were saved: every step consumed one global batch.
    return saved.get("examples", step * setup.config.batch_size)


def train_iterator(setup: Setup, start_examples: int = 0) -> Any:
    """This process's endless training batches: preprocessed images (from `start_examples` on), or packed
    sequences (NaViT)."""
    config = setup.config
    common = dict(batch_size=config.batch_size // jax.process_count(), seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count(),
                  num_threads=config.data_threads, num_workers=config.data_workers)
    if setup.packed is None:
        return pipeline.train_iterator(setup.sources["train_split"], setup.preprocess, start=start_examples,
                                       **common)
    return packed_train_iterator(setup.sources["train_split"], setup.packed, seq_len=config.packing.seq_len,
                                 max_images=config.packing.max_images, num_bins=config.packing.num_bins, **common)


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


def train_loop(run: Run, state: TrainState, start_step: int, preemption: PreemptionWatcher
               ) -> tuple[TrainState, dict[str, float]]:
    """Steps `start_step + 1 .. num_steps`, with logging, evaluation and checkpoints; returns the final state and
    the last eval metrics."""
    config, writer, checkpoints = run.setup.config, run.writer, run.checkpoints
    compiled: dict[tuple[int, int] | None, Callable] = {}  # one compiled step per (FlexiViT) patch size
    results: dict[str, float] = {}
    window: list[dict[str, jax.Array]] = []
    window_start = time.perf_counter()
    pending_loss: tuple[int, jax.Array] | None = None  # checked one step late, so the host never waits on a step

    for step in range(start_step + 1, config.num_steps + 1):
        batch = to_global(next(run.train_data), run.data_sharding)
        patch_size = None
        if run.setup.flexi_sizes:  # drawn for the update that takes the state from step - 1 to step
            patch_size = draw_patch_size(config.seed, step, run.setup.flexi_sizes, run.setup.flexi_probabilities)
        if patch_size not in compiled:
            compile_start = time.perf_counter()
            compiled[patch_size] = run.train_step.lower(state, batch, patch_size).compile()
            record = {"perf/compile_seconds": time.perf_counter() - compile_start}
            if patch_size is not None:
                record["flexi/compiled_patch_size"] = float(patch_size[0])
            writer.write(step - 1, record)
            window_start += time.perf_counter() - compile_start  # compile time is not step time
        train_step = compiled[patch_size]
        state, metrics = train_step(state, batch)
        window.append(metrics)
        if pending_loss is not None:
            _check_finite(*pending_loss, checkpoints)
        pending_loss = (step, metrics["train/loss"])
        writer.advance()

        is_last = step == config.num_steps
        if step % config.log_every == 0 or is_last:
            writer.write(step, _window_metrics(jax.device_get(window), time.perf_counter() - window_start,
                                               config.batch_size))
            window = []
        eval_metrics = None
        if step % config.eval_every == 0 or is_last:
            _check_finite(*pending_loss, checkpoints)
            eval_metrics = results = run.evaluate(state.params, "eval_split", "eval")
            writer.write(step, eval_metrics)
            run.pictures.after_eval(step, state.params, is_last)
        if eval_metrics is not None or step % config.checkpoint_every == 0 or is_last:
            _check_finite(*pending_loss, checkpoints)
            run.save(step, state, metrics=eval_metrics)
        if preemption.reached(step) and not is_last:
            _check_finite(*pending_loss, checkpoints)
            if checkpoints.latest_step() != step:
                run.save(step, state)
            checkpoints.wait()
            raise Preempted(f"SIGTERM received: saved step {step} in {checkpoints.directory}; run the same "
                            f"command again to resume")
        if eval_metrics is not None or step % config.log_every == 0:
            window_start = time.perf_counter()  # evaluation and logging time is not step time
    return state, dict(results)


def final_test(run: Run, state: TrainState) -> dict[str, float]:
    """The one evaluation on the test split, at the end; printed and logged."""
    config = run.setup.config
    test = run.evaluate(state.params, "test_split", "test")
    step = int(state.step)
    run.writer.write(step, test)
    count = int(test["test/num_examples"])
    for size in run.setup.flexi_sizes:
        label = patch_label(size)
        run.writer.print(f"test accuracy at patch size {label}: {100 * test[f'test/p{label}/accuracy']:.2f}%")
    for size in run.setup.eval_image_sizes:
        label = patch_label(size)
        run.writer.print(f"test accuracy at {size[0]}x{size[1]} px: {100 * test[f'test/r{label}/accuracy']:.2f}%")
    mean = " (mean over the patch sizes)" if run.setup.flexi_sizes else ""
    run.writer.print(f"final test accuracy: {100 * test['test/accuracy']:.2f}%{mean} on {count} {config.dataset} "
                     f"{config.test_split} images (step {step})")
    return test


def _check_finite(step: int, loss: jax.Array, checkpoints: TrainCheckpoints) -> None:
    value = float(loss)
    if not math.isfinite(value):
        last = checkpoints.latest_step()
        kept = (f"The last good checkpoint (step {last}) is kept in {checkpoints.directory}" if last is not None
                else "No checkpoint had been saved yet, so the run will start from scratch when run again")
        raise NonFiniteLossError(
            f"training loss is {value} at step {step}; stopped without saving. {kept}. Lower "
            f"config.optimizer.learning_rate, or set config.optimizer.grad_clip_norm"
        )


def _window_metrics(window: list[dict[str, np.ndarray]], elapsed: float, batch_size: int) -> dict[str, float]:
    """Means over the steps since the last log (learning rate: the latest), and throughput."""
    metrics = {key: float(np.mean([m[key] for m in window])) for key in window[0]}
    metrics["train/learning_rate"] = float(window[-1]["train/learning_rate"])
    metrics["perf/step_seconds"] = elapsed / len(window)
    images_per_example = metrics.get("train/images_per_sequence", 1.0)  # packed: images per sequence
    metrics["perf/images_per_second"] = images_per_example * batch_size * len(window) / elapsed
    return metrics
