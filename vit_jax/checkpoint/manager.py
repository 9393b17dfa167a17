"""Training checkpoints with orbax: the train state and the data's position, saved together.

Layout: `DIR/checkpoints/<step>/{state,position}` (+ `data`, grain's per-process iterator state, for iterators
whose position only they know, such as packing). Saves are asynchronous (training continues while arrays are
written); orbax writes each step into a temporary directory and renames it only when complete, so a save cut
short (the process killed mid-save) is never picked up: the previous step is restored, and the leftover
temporary directory is removed when the manager opens. Kept: the last `keep` steps plus the best by
`eval/accuracy`, or by `eval_ema/accuracy` for a run that keeps a moving average of its weights (`config.ema`;
timm's rule), whose weights are then what the workdir stands for (`model_params`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vit_jax.optim import ema_params

CHECKPOINT_DIR = "checkpoints"  # inside a workdir
STATE = "state"
DATA = "data"
POSITION = "position"
BEST_METRIC = "eval/accuracy"
EMA_EVAL = "eval_ema"  # the prefix of the moving average's evaluation metrics
EMA_BEST_METRIC = f"{EMA_EVAL}/accuracy"


def best_metric(metrics: dict[str, float]) -> float:
    return metrics.get(EMA_BEST_METRIC, metrics[BEST_METRIC])


def model_params(state: Any) -> Any:
    """The weights a restored train state stands for: the moving average when the run kept one, else its
    parameters."""
    field = state.__getitem__ if isinstance(state, dict) else lambda name: getattr(state, name)
    ema = ema_params(field("opt_state"))
    return ema if ema is not None else field("params")


def state_handler() -> ocp.StandardCheckpointHandler:
    """orbax's handler for the train state. On one process with CPU devices, each array is written whole, from one
    replica: orbax's default, replica-parallel writing, slices a replicated array into a part per device (so that
    hosts, or accelerators' transfers, share the work); on the CPU devices of one process that is a compiled slice
    per array shape and device (tests/test_checkpoint_manager.py counts them), for copies of host memory that gain
    nothing."""
    handler = ocp.StandardCheckpointHandler()
    if jax.process_count() == 1 and jax.devices()[0].platform == "cpu":
        whole = ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                               use_replica_parallel=False)
        others = (int, float, bytes, np.number, np.ndarray, str, type(ocp.PLACEHOLDER))  # orbax's standard types
        registry = ocp.type_handlers.create_type_handler_registry(
            *((t, ocp.type_handlers.get_type_handler(t)) for t in others), (jax.Array, whole))
        # the handler's own PyTree handler, with that registry (orbax <0.13: pyproject.toml)
        handler._impl = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
    return handler


class CheckpointReadError(ValueError):
    """A checkpoint step that cannot be restored (incomplete, corrupt, or of another state's layout)."""


def _quiet_closed_loop_callbacks() -> None:
    """After a failed restore, TensorStore's other reads still complete on its threads, into orbax's already closed
    event loop ("Event loop is closed") or as never-awaited read errors; each would print a traceback around the
    one-line error that says it all. Those two are dropped from then on; anything else still prints."""
    def noise(error: BaseException | None) -> bool:
        return (isinstance(error, RuntimeError) and "Event loop is closed" in str(error)) or (
            type(error) is Exception and str(error).startswith("Encountered error while reading array"))

    previous_excepthook, previous_unraisablehook = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda kind, error, trace: None if noise(error) else previous_excepthook(kind, error, trace)
    sys.unraisablehook = lambda unraisable: None if noise(unraisable.exc_value) else previous_unraisablehook(unraisable)


class TrainCheckpoints:
    """Saves and restores `(train state, grain iterator)` pairs under `directory`."""

    def __init__(self, directory: str | Path, *, keep: int = 2, async_save: bool = True):
        self.directory = Path(directory)
        self._keep = keep
        self._async_save = async_save
        self._opened: ocp.CheckpointManager | None = None

    @property
    def _manager(self) -> ocp.CheckpointManager:
        """Opened on first use, so that only saving creates the directory (reading a workdir, or a run that
        fails its checks, leaves none behind)."""
        if self._opened is None:
            policy = preservation_policy.AnyPreservationPolicy([
                preservation_policy.LatestN(n=self._keep),
                preservation_policy.BestN(get_metric_fn=best_metric, n=1,
                                          keep_checkpoints_without_metrics=False),
            ])
            self._opened = ocp.CheckpointManager(
                self.directory.absolute(),
                # Built with its item handlers: otherwise item_metadata() is None and restores cannot inspect items.
                item_handlers={STATE: state_handler(), DATA: grain.checkpoint.CheckpointHandler(),
                               POSITION: ocp.JsonCheckpointHandler()},
                options=ocp.CheckpointManagerOptions(
                    preservation_policy=policy,
                    enable_async_checkpointing=self._async_save,
                    cleanup_tmp_directories=True,
                ),
            )
        return self._opened

    def latest_step(self) -> int | None:
        return self._manager.latest_step() if self.directory.is_dir() else None

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps()) if self.directory.is_dir() else []

    def save(self, step: int, state: Any, data_iterator: Any = None, metrics: dict[str, float] | None = None,
             position: dict[str, Any] | None = None) -> None:
        """Starts saving `step` (returns once arrays are copied off the devices; writing goes on behind).
        `position`: where the data stands, as JSON (written once, by process 0); `data_iterator`: a grain
        iterator whose own state is saved, one file per process."""
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        if position is not None:
            items[POSITION] = ocp.args.JsonSave(position)
        self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def position(self, step: int) -> dict[str, Any] | None:
        """The data position saved with `step`; None for checkpoints saved without one."""
        if not (self.directory / str(step) / POSITION).is_dir():
            return None
        return dict(self._manager.restore(step, args=ocp.args.Composite(**{POSITION: ocp.args.JsonRestore()}))[
            POSITION])

    def restore(self, step: int, abstract_state: Any = None, data_iterator: Any = None) -> Any:
        """The state at `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings; None: as saved,
        on this host); the iterator, if given, is moved to where it was when `step` was saved."""
        try:
            if abstract_state is None:
                abstract_state = self.local_layout(step)
            items = {STATE: ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
            return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]
        except Exception as error:  # noqa: BLE001 (orbax raises plain Exceptions for unreadable arrays)
            _quiet_closed_loop_callbacks()
            first = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0][:300]
            raise CheckpointReadError(f"{self.directory / str(step)}: cannot be restored ({type(error).__name__}: "
                                      f"{first}); if a copy or save of it was cut short, remove that directory to "
                                      f"start from the step before") from None

    def local_layout(self, step: int) -> Any:
        """The saved state's shapes and dtypes, placed whole on this process's first device: a checkpoint saved
        under any mesh can be read for inspection or export on one machine."""
        metadata = self._manager.item_metadata(step)[STATE]
        device = SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                            getattr(metadata, "tree", metadata))

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        if self._opened is not None:
            self._opened.wait_until_finished()

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
