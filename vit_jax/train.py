"""`train_and_evaluate(config, workdir)`: train a ViT from a config, evaluate, log, checkpoint, resume.

config -> checks (before anything compiles) -> data + model -> sharded state -> jit train step (`vit_jax.steps`)
-> metrics, evaluations (`vit_jax.evaluation`) and checkpoints. Running it again on the same workdir resumes from
the latest checkpoint, data position included.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from ml_collections import ConfigDict

from vit_jax import config_validation
from vit_jax.build import (
    Setup,
    compile_run_once,
    init_state_fn,
    plan_init,
    resumed_examples,
    set_up,
    start_from,
    state_shardings,
    teacher_shardings,
    train_iterator,
)
from vit_jax.checkpoint.manager import CHECKPOINT_DIR, EMA_EVAL, TrainCheckpoints
from vit_jax.config import CONFIG_FILE, save_config, saved_config
from vit_jax.evaluation import Evaluator, final_test
from vit_jax.flexi import draw_patch_size
from vit_jax.host_memory import keep_freed_memory
from vit_jax.interpret.tensorboard import PictureLogger, first_examples
from vit_jax.metric_writers import MetricWriter
from vit_jax.optim import ema_params
from vit_jax.preemption import PreemptionWatcher
from vit_jax.sharding import batch_sharding, host_tree_to_global, replicated, to_global
from vit_jax.steps import (
    TrainState,
    make_eval_step,
    make_representation_step,
    make_scored_eval_step,
    make_train_step,
)

MAX_STEPS_AHEAD = 2  # steps the host may dispatch before the oldest has finished


class NonFiniteLossError(RuntimeError):
    """The training loss, or the update it made to the parameters, became NaN or infinite; the run stops without
    saving the broken state."""


CHECKED = {"train/loss": "training loss", "train/update_max": "the largest parameter update"}


class Preempted(RuntimeError):
    """SIGTERM arrived; the state was saved and the run stopped so that running it again resumes."""


@dataclasses.dataclass
class Run:
    """The compiled steps of a run, its data and where it writes."""

    setup: Setup
    train_step: Callable
    evaluator: Evaluator
    train_data: Any  # grain iterator, checkpointed with the state
    data_sharding: NamedSharding
    checkpoints: TrainCheckpoints
    writer: MetricWriter
    pictures: PictureLogger
    start_step: int = 0  # where this invocation started, and
    start_examples: int = 0  # the examples of the global training stream consumed by then
    teacher_params: Any = None  # distillation's teacher, on the devices

    def save(self, step: int, state: TrainState, metrics: dict[str, float] | None = None) -> None:
        """Checkpoints `step` with where the data stands: the examples of the global stream consumed, which any
        process count resumes from. A packed run's position is its packers' state: grain's, per process."""
        config = self.setup.config
        position = {"step": step, "process_count": jax.process_count(), "global_batch_size": config.batch_size}
        if self.setup.packed is None:
            position["examples"] = self.start_examples + (step - self.start_step) * config.batch_size
        packers = self.train_data if self.setup.packed is not None else None
        self.checkpoints.save(step, state, packers, metrics=metrics, position=position)


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
    config_validation.check_frozen(config, abstract_state.params)
    shardings = state_shardings(abstract_state, config, setup.mesh)
    checkpoints = TrainCheckpoints(workdir / CHECKPOINT_DIR, keep=config.keep)
    start_step = checkpoints.latest_step() or 0
    if start_step and (workdir / CONFIG_FILE).exists():  # before its config.json is written over
        config_validation.check_resume(config, saved_config(workdir), start_step, workdir)
    start_examples = resumed_examples(checkpoints, start_step, setup)
    adaptation = plan_init(setup, abstract_state.params) if config.init.path and not start_step else None
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        save_config(config, workdir)

    data_sharding = batch_sharding(setup.mesh)
    teacher_sharding = teacher_shardings(setup)
    teacher_params = (None if setup.distillation is None
                      else host_tree_to_global(setup.teacher_params, teacher_sharding))
    train_data = train_iterator(setup, start_examples)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state,
                            shardings)
    background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="init")
    state: TrainState | concurrent.futures.Future[TrainState]
    if start_step:
        state = checkpoints.restore(start_step, abstract, train_data if setup.packed is not None else None)
    else:  # compiled and run beside the train step's compile (XLA compiles one program per thread)
        state = background.submit(lambda: compile_run_once(jax.jit(init, out_shardings=shardings))())
        if adaptation is not None:
            state = start_from(adaptation, state.result(), setup.tx, shardings)

    writer = MetricWriter(workdir, total_steps=config.num_steps, start_step=start_step,
                          enabled=jax.process_index() == 0)
    picture_images = np.zeros((0,))  # only process 0 draws
    if config.log_pictures != "none" and jax.process_index() == 0:
        picture_images = first_examples(setup.sources["eval_split"], setup.preprocess, config.pictures_images)
    run = Run(
        setup=setup,
        train_step=jax.jit(
            make_train_step(setup.model, setup.tx, setup.schedule, dropout_key=jax.random.fold_in(root_key, 1),
                            accum_steps=config.accum_steps, label_smoothing=config.label_smoothing, mesh=setup.mesh,
                            pixels=setup.preprocess.pixels_on_device, random_erasing=setup.random_erasing,
                            mixup=setup.mixup, distillation=setup.distillation,
                            loss=config.get("loss", "cross_entropy"),
                            bce_target_threshold=config.get("bce_target_threshold")),
            in_shardings=(shardings, data_sharding, teacher_sharding),
            out_shardings=(shardings, replicated(setup.mesh)),
            static_argnums=(2,),  # patch_size: one compiled step per FlexiViT patch size
            donate_argnums=(0,),
        ),
        evaluator=Evaluator(
            eval_step=jax.jit(make_eval_step(setup.model, config.get("loss", "cross_entropy")),
                              in_shardings=(shardings.params, data_sharding), out_shardings=replicated(setup.mesh),
                              static_argnums=(2,)),
            sources=setup.sources, preprocess=setup.preprocess, data_sharding=data_sharding,
            batch_size=config.eval_batch_size, num_classes=setup.num_classes, num_threads=config.data_threads,
            flexi_sizes=setup.flexi_sizes, image_sizes=setup.eval_image_sizes, packed=setup.packed,
            seq_len=config.packing.seq_len, max_images=config.packing.max_images, extra=setup.extra_evals,
            extra_steps=extra_eval_steps(setup, shardings.params, data_sharding),
            representation_step=jax.jit(make_representation_step(setup.model), in_shardings=(
                shardings.params, data_sharding), out_shardings=replicated(setup.mesh)),
        ),
        train_data=train_data,
        data_sharding=data_sharding,
        checkpoints=checkpoints,
        writer=writer,
        pictures=PictureLogger(setup.model, picture_images, tuple(config.pp.value_range), config.log_pictures,
                               writer),
        start_step=start_step,
        start_examples=start_examples,
        teacher_params=teacher_params,
    )
    if start_step:
        run.writer.print(f"resumed from step {start_step} in {checkpoints.directory}")
    try:
        if adaptation is not None:
            for note in adaptation.notes:
                run.writer.print(f"init from {config.init.path}: {note}")
            run.writer.write(0, {**run.evaluator.split_metrics(state.params, "eval_split", "eval"),  # before any
                                 **run.evaluator.extra_metrics(state.params)})  # fine-tuning step
        with PreemptionWatcher() as preemption:
            state, results = train_loop(run, state, abstract, start_step, preemption)
        if config.test_split:
            results.update(final_test(run.evaluator, state.params, int(state.step), run.writer,
                                      f"{config.dataset} {config.test_split}", ema_params(state.opt_state)))
    finally:
        background.shutdown(cancel_futures=True)
        checkpoints.wait()
        checkpoints.close()
        run.writer.close()
    return results


def extra_eval_steps(setup: Setup, param_shardings: Any, data_sharding: Any) -> dict[str, Any]:
    """A compiled eval step per extra dataset (`vit_jax.extra_evals`), on its classes' columns of the head."""
    step = make_scored_eval_step(setup.model, setup.config.get("loss", "cross_entropy"))
    return {name: jax.jit(functools.partial(step, columns=extra.classes.columns), in_shardings=(param_shardings,
                          data_sharding), out_shardings=replicated(setup.mesh))
            for name, extra in setup.extra_evals.items() if extra.classes is not None}


def train_loop(run: Run, state: TrainState | concurrent.futures.Future[TrainState], abstract_state: TrainState,
               start_step: int, preemption: PreemptionWatcher) -> tuple[TrainState, dict[str, float]]:
    """Steps `start_step + 1 .. num_steps`, with logging, evaluation and checkpoints; returns the final state and
    the last eval metrics. The train step compiles against `abstract_state`, so a fresh `state` may still be
    compiling and initialising (a future) meanwhile. The host never reads a step's results before logging, an
    evaluation or a save asks for them: it only waits for the step `MAX_STEPS_AHEAD` back to finish, so the next
    batch is read and placed while the device computes, and at most that many batches are in flight."""
    config, writer, checkpoints = run.setup.config, run.writer, run.checkpoints
    compiled: dict[tuple[int, int] | None, Callable] = {}  # one compiled step per (FlexiViT) patch size
    results: dict[str, float] = {}
    window: list[dict[str, jax.Array]] = []
    window_start, data_wait = time.perf_counter(), 0.0
    # (step, metrics) not yet checked for NaN or infinity: checked before anything is saved
    unchecked: list[tuple[int, dict[str, jax.Array]]] = []
    in_flight: collections.deque[jax.Array] = collections.deque()

    for step in range(start_step + 1, config.num_steps + 1):
        wait_start = time.perf_counter()
        local_batch = next(run.train_data)  # blocks only when the input pipeline has fallen behind
        waited = time.perf_counter() - wait_start
        if step == start_step + 1:  # the pipeline starting (worker processes, first reads): start-up, not starving
            writer.write(step - 1, {"perf/first_batch_seconds": waited})
            window_start += waited
        else:
            data_wait += waited
        batch = to_global(local_batch, run.data_sharding)
        patch_size = None
        if run.setup.flexi_sizes:  # drawn for the update that takes the state from step - 1 to step
            patch_size = draw_patch_size(config.seed, step, run.setup.flexi_sizes, run.setup.flexi_probabilities)
        if patch_size not in compiled:
            compile_start = time.perf_counter()
            compiled[patch_size] = run.train_step.lower(abstract_state, batch, patch_size, run.teacher_params).compile()
            record = {"perf/compile_seconds": time.perf_counter() - compile_start}
            memory = compiled[patch_size].memory_analysis()
            buffers = MAX_STEPS_AHEAD + 2  # steps in flight, and the one whose buffer is being freed
            if config.get("keep_host_memory", True) and memory is not None and keep_freed_memory(
                    memory.temp_size_in_bytes, buffers, jax.default_backend()):
                record["perf/keeps_host_memory"] = 1.0
            if patch_size is not None:
                record["flexi/compiled_patch_size"] = float(patch_size[0])
            writer.write(step - 1, record)
            if isinstance(state, concurrent.futures.Future):
                state = state.result()
            window_start += time.perf_counter() - compile_start  # compile (and init) time is not step time
        state, metrics = compiled[patch_size](state, batch, run.teacher_params)
        window.append(metrics)
        unchecked.append((step, {k: metrics[k] for k in CHECKED if k in metrics}))
        in_flight.append(metrics["train/loss"])
        if len(in_flight) > MAX_STEPS_AHEAD:
            in_flight.popleft().block_until_ready()  # a wait, not a transfer: bounds the batches in flight
        writer.advance()

        is_last = step == config.num_steps
        if step % config.log_every == 0 or is_last:
            _check_finite(unchecked, checkpoints)
            writer.write(step, _window_metrics(jax.device_get(window), time.perf_counter() - window_start,
                                               data_wait, config.batch_size))
            window = []
        eval_metrics = None
        if step % config.eval_every == 0 or is_last:
            _check_finite(unchecked, checkpoints)
            eval_metrics = results = run.evaluator.split_metrics(state.params, "eval_split", "eval")
            eval_metrics.update(run.evaluator.extra_metrics(state.params))
            if (ema := ema_params(state.opt_state)) is not None:
                eval_metrics.update(run.evaluator.split_metrics(ema, "eval_split", EMA_EVAL))
            writer.write(step, eval_metrics)
            run.pictures.after_eval(step, state.params, is_last)
        if eval_metrics is not None or step % config.checkpoint_every == 0 or is_last:
            _check_finite(unchecked, checkpoints)
            run.save(step, state, metrics=eval_metrics)
        if preemption.reached(step) and not is_last:
            _check_finite(unchecked, checkpoints)
            if checkpoints.latest_step() != step:
                run.save(step, state)
            checkpoints.wait()
            raise Preempted(f"SIGTERM received: saved step {step} in {checkpoints.directory}; run the same "
                            f"command again to resume")
        if eval_metrics is not None or step % config.log_every == 0:
            window_start, data_wait = time.perf_counter(), 0.0  # evaluation and logging time is not step time
    if isinstance(state, concurrent.futures.Future):  # no step ran (num_steps = 0)
        state = state.result()
    return state, dict(results)


def _check_finite(unchecked: list[tuple[int, dict[str, jax.Array]]], checkpoints: TrainCheckpoints) -> None:
    """Raises at the first non-finite loss or parameter update among `unchecked` (which it empties)."""
    values = jax.device_get([metrics for _, metrics in unchecked])
    steps = [step for step, _ in unchecked]
    unchecked.clear()
    for step, metrics in zip(steps, values):
        bad = [(CHECKED[name], float(value)) for name, value in metrics.items() if not math.isfinite(float(value))]
        if not bad:
            continue
        what, value = bad[0]
        last = checkpoints.latest_step()
        kept = (f"The last good checkpoint (step {last}) is kept in {checkpoints.directory}" if last is not None
                else "No checkpoint had been saved yet, so the run will start from scratch when run again")
        raise NonFiniteLossError(
            f"{what} is {value} at step {step}; stopped without saving. {kept}. Lower "
            f"config.optimizer.learning_rate, or set config.optimizer.grad_clip_norm"
        )


def _window_metrics(window: list[dict[str, np.ndarray]], elapsed: float, data_wait: float, batch_size: int
                    ) -> dict[str, float]:
    """Means over the steps since the last log (learning rate: the latest), throughput, and the share of the time
    the loop was blocked waiting for the input pipeline's next batch (`perf/data_wait_fraction`: near 0 when the
    pipeline keeps ahead; placing the batch on the devices is host work that overlaps the device's steps)."""
    metrics = {key: float(np.mean([m[key] for m in window])) for key in window[0]}
    metrics["train/learning_rate"] = float(window[-1]["train/learning_rate"])
    metrics["perf/step_seconds"] = elapsed / len(window)
    images_per_example = metrics.get("train/images_per_sequence", 1.0)  # packed: images per sequence
    metrics["perf/images_per_second"] = images_per_example * batch_size * len(window) / elapsed
    metrics["perf/data_wait_fraction"] = min(data_wait / elapsed, 1.0) if elapsed > 0 else 0.0
    return metrics
