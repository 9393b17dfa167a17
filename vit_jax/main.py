"""The main job: `python -m vit_jax.main --config=configs/<name>.py[:key=value,...] --workdir=DIR`.

Trains a ViT from an ml-collections config, evaluates, logs and checkpoints into DIR; running the same command
again resumes where it stopped. Any config field can be overridden as `--config.field=value`.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from vit_jax.console import quiet_logging
from vit_jax.entry import check_workdir, define_process_flags, exit_statuses, parse_flags, start_process
from vit_jax.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py or configs/vit.py:variant=S/16")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics (resumed if it has them).")
define_process_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logging()
    with exit_statuses():
        workdir = check_workdir(_WORKDIR.value)
        start_process(_CONFIG.value)
        train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
