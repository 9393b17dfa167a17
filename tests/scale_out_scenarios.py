"""Runs that need several devices, executed in a fresh process that has them:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.scale_out_scenarios SCENARIO OUT DATA_DIR

`meshes`: the same 10 steps on 1 device, data parallel over 8, FSDP over 8 and data x model (4 x 2, tensor
parallel + FSDP); then the data-parallel run's step-10 checkpoint resumed to 15 on 1 device and, separately, with
FSDP (one process for both, so the data-parallel run is trained once). Each run's workdir is OUT/<run>;
OUT/placements.json holds each parameter's PartitionSpec as placed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax

from tests.conftest import tiny_digits_config
from vit_jax.build import init_state_fn, set_up, state_shardings
from vit_jax.param_paths import path_string
from vit_jax.train import train_and_evaluate

RUNS = {
    "one_device": dict(arg="", devices=1),
    "data": dict(arg="", devices=8),
    "fsdp": dict(arg="sharding_rules=(('.*','fsdp'),),fsdp_min_size=1024", devices=8),
    "data_x_model": dict(arg="mesh=(('data',4),('model',2)),sharding_rules=(('.*','tp_fsdp'),),fsdp_min_size=1024",
                         devices=8),
}
# Batch 32: 4 examples per device on the 8-device meshes, what the equivalence needs and no more. One checkpoint,
# at step 10 (the one the tests compare and resume from). The weights' moving average, sharded like the weights and
# resharded on resume, must not depend on the mesh either.
TEN_STEPS = ("num_steps=10,batch_size=32,eval_batch_size=64,log_every=1,eval_every=10,checkpoint_every=10,"
             "optimizer.schedule=constant,optimizer.warmup_steps=0,ema.decay=0.9")


def config_for(run: str, data_dir: str, steps: str = TEN_STEPS):
    arg = ",".join(filter(None, [steps, RUNS[run]["arg"]]))
    return tiny_digits_config(data_dir, arg)


def placements(config, devices) -> dict[str, str]:
    """Each parameter's PartitionSpec under the run's rules: the `out_shardings` `train_and_evaluate` compiles its
    state's init with (derived here as it does, without compiling the init a second time)."""
    setup = set_up(config, devices)
    init = init_state_fn(setup, jax.random.key(0))
    shardings = state_shardings(jax.eval_shape(init), config, setup.mesh)
    return {path_string(path): str(sharding.spec)
            for path, sharding in jax.tree_util.tree_leaves_with_path(shardings.params)}


def meshes(out: Path, data_dir: str) -> None:
    placed = {}
    for run, spec in RUNS.items():
        devices = jax.devices()[: spec["devices"]]
        config = config_for(run, data_dir)
        train_and_evaluate(config, out / run, devices)
        placed[run] = placements(config, devices)
    (out / "placements.json").write_text(json.dumps(placed, indent=1))
    reshard(out, data_dir)


def reshard(out: Path, data_dir: str) -> None:
    """The data-parallel run (OUT/data, trained by `meshes`) resumed on other meshes."""
    for run, devices in (("one_device", jax.devices()[:1]), ("fsdp", jax.devices())):
        shutil.copytree(out / "data", out / f"resumed_{run}")
        config = config_for(run, data_dir, TEN_STEPS.replace("num_steps=10", "num_steps=15"))
        train_and_evaluate(config, out / f"resumed_{run}", devices)


if __name__ == "__main__":
    scenario, out, data_dir = sys.argv[1:4]
    assert jax.device_count() == 8, f"run with 8 devices; got {jax.device_count()}"
    {"meshes": meshes}[scenario](Path(out), data_dir)
