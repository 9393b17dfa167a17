import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import ROOT, xla_env
from vit_jax.build import resumed_examples
from vit_jax.checkpoint import TrainCheckpoints
from vit_jax.checkpoint.manager import CheckpointReadError
from vit_jax.config_validation import ConfigError


def iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=0).repeat().batch(4).to_iter_dataset())


def state_at(step: int) -> dict:
    return {"step": jnp.array(step), "params": {"w": jnp.full((3,), float(step))}}


def test_keeps_the_last_n_plus_the_best_by_eval_accuracy(tmp_path):
    checkpoints = TrainCheckpoints(tmp_path, keep=2)
    data = iterator()
    accuracy = {2: 0.5, 4: 0.9, 6: 0.6, 8: 0.7}
    for step in range(1, 11):
        next(data)
        metrics = {"eval/accuracy": accuracy[step]} if step in accuracy else None
        checkpoints.save(step, state_at(step), data, metrics=metrics)
    checkpoints.wait()
    assert checkpoints.all_steps() == [4, 9, 10]
    checkpoints.close()


def test_restore_returns_state_and_moves_the_iterator(tmp_path):
    checkpoints = TrainCheckpoints(tmp_path)
    data = iterator()
    for _ in range(3):
        next(data)
    checkpoints.save(3, state_at(3), data)
    checkpoints.wait()
    expected_next = next(data)

    fresh = iterator()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state_at(0))
    restored = TrainCheckpoints(tmp_path).restore(3, abstract, fresh)
    np.testing.assert_array_equal(restored["params"]["w"], [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(next(fresh), expected_next)


def test_a_save_cut_short_is_never_picked_up(tmp_path):
    checkpoints = TrainCheckpoints(tmp_path)
    checkpoints.save(5, state_at(5), iterator())
    checkpoints.wait()
    checkpoints.close()
    # What a process killed while writing step 9 leaves: orbax's temporary directory, half written.
    partial = tmp_path / "9.orbax-checkpoint-tmp-1700000000000000"
    shutil.copytree(tmp_path / "5", partial)
    for path in sorted((partial / "state").rglob("*"))[::2]:
        if path.is_file():
            path.unlink()
    reopened = TrainCheckpoints(tmp_path)
    assert reopened.latest_step() == 5 and reopened.all_steps() == [5]
    np.testing.assert_array_equal(reopened.restore(5)["params"]["w"], [5.0, 5.0, 5.0])
    reopened.save(6, state_at(6), iterator())
    reopened.wait()
    assert not partial.exists()  # removed in the background once the manager opened
    assert reopened.all_steps() == [5, 6]

    # a copy of the workdir cut short (no orbax name to tell): one error naming the step, not orbax's traceback
    for path in sorted((tmp_path / "6" / "state").rglob("*")):
        if path.is_file():
            path.unlink()
    with pytest.raises(CheckpointReadError, match=r"/6: cannot be restored \(.*\); if a copy or save of it was cut "
                                                  r"short, remove that directory to start from the step before"):
        TrainCheckpoints(tmp_path).restore(6)

    # array data overwritten (orbax raises a plain Exception with TensorStore's whole spec): the same one error
    reopened.save(7, {"step": jnp.array(7), "params": {"w": jnp.asarray(np.random.default_rng(0).standard_normal(
        (64, 128)), jnp.float32)}})
    reopened.wait()
    chunk = max((tmp_path / "7" / "state").rglob("d/*"), key=lambda path: path.stat().st_size)  # the array's data
    chunk.write_bytes(np.random.default_rng(1).bytes(chunk.stat().st_size))
    with pytest.raises(CheckpointReadError, match=r"/7: cannot be restored \(Exception: Encountered error while "
                                                  r"reading array index: .*\)\.\); if a copy") as error:
        TrainCheckpoints(tmp_path).restore(7)
    assert "TensorStore" not in str(error.value)


def test_a_saved_position_comes_back_and_decides_where_a_resumed_stream_starts(tmp_path):
    checkpoints = TrainCheckpoints(tmp_path)
    checkpoints.save(3, state_at(3), position={"step": 3, "examples": 300, "process_count": 2})
    checkpoints.save(4, state_at(4))  # saved without a position, as before positions existed
    checkpoints.wait()
    assert checkpoints.position(3) == {"step": 3, "examples": 300, "process_count": 2}
    assert checkpoints.position(4) is None
    images = SimpleNamespace(packed=None, config=SimpleNamespace(batch_size=64))
    assert resumed_examples(checkpoints, 3, images) == 300  # whatever this run's process count
    assert resumed_examples(checkpoints, 4, images) == 4 * 64  # one global batch per step
    assert resumed_examples(checkpoints, 0, images) == 0
    packed = SimpleNamespace(packed=object(), config=images.config)  # packers' state is per process
    with pytest.raises(ConfigError, match=r"checkpoint step 3 in .* was saved by 2 processes and this run has 1: a "
                                          r"packed \(NaViT\) run's data position .* restorable only onto 2 processes"):
        resumed_examples(checkpoints, 3, packed)
    checkpoints.close()


# In a process with 8 CPU devices: the compilations orbax's default state handler and vit_jax's run while saving a
# replicated tree, and the tree each restores.
SAVES_ON_EIGHT_DEVICES = """
import json, sys
import jax, numpy as np, orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from vit_jax.checkpoint.manager import state_handler
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
tree = {f"w{i}": np.arange(64 * 8, dtype=np.float32).reshape(64, 8) + i for i in range(3)}
placed = jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
result = {}
for name, handler in (("default", ocp.StandardCheckpointHandler()), ("ours", state_handler())):
    with ocp.Checkpointer(handler) as checkpointer:
        del compiles[:]
        checkpointer.save(sys.argv[1] + "/" + name, args=ocp.args.StandardSave(placed))
        saving = len(compiles)
        back = checkpointer.restore(sys.argv[1] + "/" + name, args=ocp.args.StandardRestore(placed))
    result[name] = {"compiles": saving, "equal": all(np.array_equal(back[k], tree[k]) for k in tree)}
print(json.dumps(result))
"""


def test_state_saves_on_one_process_cpu_devices_compile_nothing(tmp_path):
    """orbax's replica-parallel writing compiles a slice per array and device on a multi-device CPU process;
    vit_jax's state handler writes each array whole from one replica (`state_handler`), with the same checkpoint."""
    done = subprocess.run([sys.executable, "-c", SAVES_ON_EIGHT_DEVICES, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=xla_env("--xla_force_host_platform_device_count=8"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["default"]["compiles"] >= 8  # the reason for the handler: slices compiled per array and device
    assert result["ours"] == {"compiles": 0, "equal": True}
    assert result["default"]["equal"]
