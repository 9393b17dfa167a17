"""Notice SIGTERM (how schedulers and TPU/GPU clouds announce preemption) so the loop can save and exit cleanly.

Single process: a signal handler sets a flag the loop polls each step. Several processes: JAX's own preemption
sync point, so that every process agrees on the step at which to save (a lone process saving would deadlock).
"""

from __future__ import annotations

import signal
import types

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """`with PreemptionWatcher() as watcher: ... if watcher.reached(step): save and exit`."""

    def __init__(self) -> None:
        self._signalled = False
        self._previous = None

    def __enter__(self) -> PreemptionWatcher:
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        del signum, frame
        self._signalled = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # jax.distributed started without its preemption service
                return False
        return self._signalled
