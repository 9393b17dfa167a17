"""What the commands print: warnings and our own lines, without the libraries' start-up chatter."""

from __future__ import annotations

import logging

from absl import logging as absl_logging

_NOISE = ("OpenCV is not installed",)  # tfds suggests OpenCV on every run; PIL is what we want


def quiet_logging() -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not any(noise in record.getMessage() for noise in _NOISE))
