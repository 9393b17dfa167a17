"""The main job: `python -m vit_jax.main --config=configs/<name>.py[:key=value,...] --workdir=DIR`.

Trains a ViT from an ml-collections config, evaluates, logs and checkpoints into DIR; running the same command
again resumes where it stopped. Any config field can be overridden as `--config.field=value`.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from vit_jax.config_validation import check_xla_flags
from vit_jax.console import quiet_logging
from vit_jax.distributed import MODES, initialize
from vit_jax.entry import check_workdir, exit_statuses, parse_flags
from vit_jax.train import train_and_evaluate
from vit_jax.xla_flags import apply_xla_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py or configs/vit.py:variant=S/16")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics (resumed if it has them).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", list(MODES),
                                 "jax.distributed: 'auto' starts it when the run is multi-process (flags below, "
                                 "JAX_COORDINATOR_ADDRESS, a SLURM job or a multi-host TPU slice).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logging()
    with exit_statuses():
        workdir = check_workdir(_WORKDIR.value)
        check_xla_flags(_CONFIG.value)
        apply_xla_flags(_CONFIG.value.xla_flags, _CONFIG.value.model.get("dtype"))  # before the backend starts
        initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
