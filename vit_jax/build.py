"""A run set up from its config, before anything compiles: the config validated, then data sources, model,
optimizer and mesh built (`vit_jax.from_config`), the initial (or fine-tuning, or resumed) state's shardings, and
the training stream at its position.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from ml_collections import ConfigDict

from vit_jax import config_validation
from vit_jax.augment.mixup import Mixup
from vit_jax.augment.random_erasing import RandomErasing
from vit_jax.checkpoint.adapt import Adaptation, fill_from_init, plan_adaptation
from vit_jax.checkpoint.manager import TrainCheckpoints
from vit_jax.checkpoint.npz import NpzError
from vit_jax.checkpoint.pretrained import load_pretrained
from vit_jax.config import cache_setting
from vit_jax.data import pipeline
from vit_jax.data.packing import PackedPreprocess, empty_sequences, packed_train_iterator
from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import InMemorySource, fits_in_memory, open_split, split_size
from vit_jax.distillation import Distillation, distillation_from_config
from vit_jax.extra_evals import ExtraEval, open_extra_evals
from vit_jax.flexi import flexi_patch_sizes, flexi_probabilities
from vit_jax.from_config import (
    SPLIT_FIELDS,
    mixup_from_config,
    model_from_config,
    open_dataset,
    packed_preprocess_from_config,
    preprocess_from_config,
    random_erasing_from_config,
)
from vit_jax.models.partitioning import ActivationSharding
from vit_jax.models.vit import VisionTransformer, input_grid
from vit_jax.optim import learning_rate_schedule, make_optimizer, with_ema
from vit_jax.sharding import (
    DATA_AXIS,
    MODEL_AXIS,
    ShardingError,
    host_tree_to_global,
    make_mesh,
    mirrored_shardings,
    replicated,
    tree_shardings,
)
from vit_jax.steps import TrainState


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
    random_erasing: RandomErasing | None = None  # batch augmentations, in the train step
    mixup: Mixup | None = None
    distillation: Distillation | None = None  # a teacher, in the train step
    teacher_params: Any = None  # its parameters (host arrays)
    extra_evals: dict[str, ExtraEval] = dataclasses.field(default_factory=dict)  # other datasets, at each evaluation


def set_up(config: ConfigDict, devices: list[jax.Device] | None = None) -> Setup:
    """Checks the config against itself, the devices and the dataset, then builds data sources, model and
    optimizer. Raises `ConfigError` (one line) on the first problem; nothing is compiled yet."""
    devices = jax.devices() if devices is None else devices
    config_validation.validate(config, len(devices), jax.process_count())
    builder, spec = open_dataset(config)
    model = model_from_config(config, spec.num_classes)
    channels = config.pp.channels or spec.image_shape[-1]  # pp.channels=3: grayscale made RGB
    image_shape = (*spec.image_shape[:-3], *tuple(config.image_size), channels)  # frames resized

    packed = packed_preprocess_from_config(config, model) if config.packing.enabled else None
    preprocess = preprocess_from_config(config)
    sources = {}
    for field in SPLIT_FIELDS:
        if not config[field]:  # no test split
            continue
        size = split_size(builder, config[field])
        cache = cache_setting(config.cache_in_memory)
        in_memory = cache is True or (cache == "auto" and fits_in_memory(spec, size))
        # training images read from disk stay encoded until the per-example preprocessing crops them
        source = open_split(builder, config[field],
                            keep_encoded=field == "train_split" and not in_memory and packed is None)
        if in_memory:
            resize_once = (packed is None and preprocess.resize_once(training=field == "train_split")
                           and not (field != "train_split" and config.eval_image_sizes)  # those resize the source
                           and fits_in_memory(dataclasses.replace(spec, image_shape=image_shape), size))
            source = InMemorySource(source, transform=preprocess.resized if resize_once else None)
        sources[field] = source
    try:  # the teacher is read (not compiled) before anything compiles, and checked against the data
        distillation, teacher_params = distillation_from_config(
            config, preprocess, image_shape, spec.num_classes, spec.class_names) or (None, None)
    except ValueError as error:
        field, problem = str(error).split(": ", 1)
        raise config_validation.field_error(f"distillation.{field}", config.distillation[field], problem) from None
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
        preprocess=preprocess,
        tx=with_ema(make_optimizer(config.optimizer, config.num_steps), config.get("ema")),
        schedule=learning_rate_schedule(config.optimizer, config.num_steps),
        flexi_sizes=flexi_patch_sizes(config.flexi.patch_sizes),
        flexi_probabilities=flexi_probabilities(flexi_patch_sizes(config.flexi.patch_sizes),
                                                config.flexi.probabilities) if config.flexi.patch_sizes else None,
        packed=packed,
        eval_image_sizes=tuple(tuple(size) for size in config.eval_image_sizes),
        random_erasing=random_erasing_from_config(config),
        mixup=mixup_from_config(config),
        distillation=distillation,
        teacher_params=teacher_params,
        extra_evals=open_extra_evals(config, spec, channels),  # checked by `validate`
    )


# XLA:CPU options for programs that run once (the state's init): compiling fast beats running fast. The digits
# model's init compiles in 4.2 s instead of 6.7 s (2-core AMD EPYC Zen 1) and still runs in milliseconds.
RUN_ONCE_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def compile_run_once(jitted: Any, *args: Any) -> Any:
    """`jitted` compiled for `args` at the lowest XLA:CPU optimization level (other backends: their defaults)."""
    options = RUN_ONCE_CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jitted.lower(*args).compile(compiler_options=options)


def init_state_fn(setup: Setup, key: jax.Array) -> Callable[[], TrainState]:
    def init() -> TrainState:
        if setup.packed is None:
            example = {"image": jnp.zeros((1, *setup.image_shape), jnp.float32)}
        else:
            packing = setup.config.packing
            example = empty_sequences(1, seq_len=packing.seq_len, max_images=packing.max_images,
                                      patch_dim=math.prod(setup.packed.patch_size) * setup.image_shape[-1])
        params = setup.model.init(key, *setup.model.inputs(example), train=False)["params"]
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
        pretrained.params, abstract_params, old_grid=init.grid or pretrained.grid,
        new_grid=tuple(setup.model.posemb_grid or setup.grid),  # the grid the new model stores its table at
        dont_load=tuple(init.dont_load), head=init.head, posemb=init.posemb, posemb_method=init.posemb_method,
        posemb_antialias=init.posemb_antialias, posemb_aspect_preserving=init.posemb_aspect_preserving,
        posemb_offset=init.posemb_offset, inflation=init.inflation,
        relative_position_resize=getattr(setup.model, "relative_position_resize", "geometric"),
        patch_method=init.patch_method,
    )


def start_from(adaptation: Adaptation, fresh: TrainState, tx: optax.GradientTransformation,
               shardings: TrainState) -> TrainState:
    """Step 0 with the adapted parameters (the rest from `fresh`) and a fresh optimizer state. Every process reads
    the whole fresh parameters (gathered across processes: sharded ones span other processes' devices) and
    places its own shards of the result."""
    fresh_params = (multihost_utils.process_allgather(fresh.params, tiled=True) if jax.process_count() > 1
                    else jax.device_get(fresh.params))
    params = host_tree_to_global(fill_from_init(adaptation, fresh_params), shardings.params)
    new_state = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))
    return jax.jit(new_state, out_shardings=shardings)(params)


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


def teacher_shardings(setup: Setup) -> Any:
    """Distillation's teacher placed as `config.sharding_rules` place the student (replicated where they do not
    fit its shapes); None without a teacher."""
    if setup.distillation is None:
        return None
    config = setup.config
    try:
        return tree_shardings(setup.teacher_params, config.sharding_rules, setup.mesh, config.fsdp_min_size)
    except ShardingError:
        return jax.tree.map(lambda _: replicated(setup.mesh), setup.teacher_params)


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
                                       repeats=config.get("repeated_augmentation", 1),
                                       uint8=True, **common)  # the step does the pixel arithmetic
    return packed_train_iterator(setup.sources["train_split"], setup.packed, seq_len=config.packing.seq_len,
                                 max_images=config.packing.max_images, num_bins=config.packing.num_bins, **common)
