"""Many devices and many processes, each run in fresh processes that have them (8 forced CPU devices; two local
processes of 2 devices on 127.0.0.1)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import ROOT, free_port, xla_env
from vit_jax.checkpoint import TrainCheckpoints
from vit_jax.metric_writers import read_metrics
from vit_jax.optim import ema_params


def run_scenario(name, out, data_dir):
    result = subprocess.run([sys.executable, "-m", "tests.scale_out_scenarios", name, str(out), data_dir], cwd=ROOT,
                            env=xla_env("--xla_force_host_platform_device_count=8"), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


def losses(workdir):
    return np.array([r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r])


def params(workdir, step, ema=False):
    """The step's parameters, or (`ema`) their moving average, which the runs keep."""
    state = TrainCheckpoints(workdir / "checkpoints").restore(step)
    return ema_params(state["opt_state"]) if ema else state["params"]


def assert_close(a, b, atol):
    """Every parameter within `atol`, except attention key biases when `atol` > 0: softmax ignores a shift shared by
    all keys, so their gradient is exactly zero and what they hold is rounding noise that Adam scales up to
    learning-rate-sized steps (seen: 2.9e-4 apart after 18 steps on an AVX2 machine)."""
    def check(path, x, y):
        if atol and jax.tree_util.keystr(path).endswith("['key']['bias']"):
            return
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, err_msg=jax.tree_util.keystr(path))
    jax.tree_util.tree_map_with_path(check, a, b)


@pytest.fixture(scope="module")
def meshes(tmp_path_factory, digits_data_dir):
    out = tmp_path_factory.mktemp("meshes")
    run_scenario("meshes", out, digits_data_dir)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("run", ["data", "fsdp", "data_x_model"])
@pytest.mark.xdist_group("scale_out_meshes")
def test_ten_steps_on_eight_devices_match_one_device(meshes, run):
    one = losses(meshes / "one_device")
    assert len(one) == 10
    np.testing.assert_allclose(losses(meshes / run), one, rtol=1e-5)
    # Adam divides by the root of tiny second moments: reduction-order rounding moves parameters by < 1e-4 here.
    assert_close(params(meshes / run, 10), params(meshes / "one_device", 10), atol=2e-4)
    assert_close(params(meshes / run, 10, ema=True), params(meshes / "one_device", 10, ema=True), atol=2e-4)


@pytest.mark.slow
@pytest.mark.xdist_group("scale_out_meshes")
def test_parameters_are_placed_as_the_rules_say(meshes):
    placed = json.loads((meshes / "placements.json").read_text())
    block = "Transformer/encoderblock_1/"
    attention, mlp = block + "MultiHeadDotProductAttention_0/", block + "MlpBlock_0/"
    assert set(placed["data"].values()) == {"P()"}
    expected = {  # width 64, 4 heads of 16, MLP 128; fsdp over 8: the largest dimension divisible by 8
        "fsdp": {attention + "query/kernel": "P('data',)", attention + "out/kernel": "P(None, None, 'data')",
                 mlp + "Dense_0/kernel": "P(None, 'data')", mlp + "Dense_1/kernel": "P('data',)",
                 mlp + "Dense_0/bias": "P()",  # 128 elements: under fsdp_min_size (1,024), whole
                 "embedding/kernel": "P(None, None, None, 'data')"},  # (4, 4, 1, 64): 1,024 elements, split
        # tensor parallel over model (2): heads and hidden units; then fsdp over data (4) on a remaining dimension
        "data_x_model": {attention + "query/kernel": "P('data', 'model')", attention + "query/bias": "P('model',)",
                         attention + "out/kernel": "P('model', None, 'data')", attention + "out/bias": "P()",
                         mlp + "Dense_0/kernel": "P('data', 'model')", mlp + "Dense_0/bias": "P('model',)",
                         mlp + "Dense_1/kernel": "P('model', 'data')", mlp + "Dense_1/bias": "P()",
                         block + "LayerNorm_0/scale": "P()"},
    }
    for run, specs in expected.items():
        for path, spec in specs.items():
            assert placed[run][path] == spec, (run, path)


@pytest.mark.slow
@pytest.mark.xdist_group("scale_out_meshes")
def test_a_checkpoint_saved_under_one_mesh_restores_under_another(meshes):
    saved = params(meshes / "data", 10)
    for run in ("resumed_one_device", "resumed_fsdp"):
        records = read_metrics(meshes / run)
        assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 16))  # resumed at 10, not redone
        assert_close(params(meshes / run, 10), saved, atol=0)  # the step-10 checkpoint itself is untouched
    # 8 devices data parallel -> 1 device, and -> FSDP: the five further steps agree
    np.testing.assert_allclose(losses(meshes / "resumed_fsdp"), losses(meshes / "resumed_one_device"), rtol=1e-5)
    assert_close(params(meshes / "resumed_fsdp", 15), params(meshes / "resumed_one_device", 15), atol=2e-4)


BATCH = 64


def main_in_processes(workdir, steps: int, data_dir: str, processes: int, init: Path) -> list[str]:
    """`python -m vit_jax.main` on the digits with 4 CPU devices in all: one process of 4, or two of 2 on
    127.0.0.1, fine-tuning `init` with FSDP (each process then holds parts of tensors that span the others'
    devices; only the MLP kernels, 8,192 elements each, are sharded: enough for that, few collectives). A constant learning rate, so that stopping at `steps` and going on later changes no update; the
    weights' moving average on (saved by one process count, resumed by another). (The global batch's row order, which
    Mixup's pairing depends on, is the same on any process count: tests/test_pipeline.py.)"""
    run = [f"--config=configs/digits.py:num_steps={steps},batch_size={BATCH},log_every=1,eval_every=4,"
           "checkpoint_every=4,optimizer.schedule=constant,optimizer.warmup_steps=0,log_pictures=none,"
           f"ema.decay=0.9,init.path={init}", "--config.sharding_rules=(('.*','fsdp'),)", "--config.fsdp_min_size=8192",
           f"--config.data_dir={data_dir}", f"--workdir={workdir}"]
    env = xla_env(f"--xla_force_host_platform_device_count={4 // processes}")
    port = free_port()
    flags = [[f"--coordinator-address=127.0.0.1:{port}", f"--num-processes={processes}", f"--process-id={i}"]
             for i in range(processes)] if processes > 1 else [[]]
    started = [subprocess.Popen([sys.executable, "-m", "vit_jax.main", *run, *f], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in flags]
    outputs = [p.communicate(timeout=600) for p in started]
    assert [p.returncode for p in started] == [0] * processes, "".join(err[-3000:] for _, err in outputs)
    return [out for out, _ in outputs]


@pytest.mark.slow
def test_two_processes_train_like_one_process_and_resume_on_another_process_count(tmp_path, digits_data_dir):
    """Fine-tuning from an `.npz` (the digits model's shapes, perturbed) with FSDP on two processes, resumed in one
    and on two again, equals one process throughout."""
    from tests.conftest import live_params
    from vit_jax.checkpoint.npz import save_npz
    from vit_jax.config import load_config_file
    from vit_jax.from_config import model_from_config

    model = model_from_config(load_config_file(ROOT / "configs" / "digits.py"), 10)
    init = tmp_path / "init.npz"
    save_npz(live_params(model, np.zeros((1, 16, 16, 1), np.float32), seed=3), init)
    chain = tmp_path / "chain"
    outputs = main_in_processes(chain, 4, digits_data_dir, processes=2, init=init)
    assert "final test accuracy" in outputs[0] and "final test accuracy" not in outputs[1]  # process 0 speaks
    assert any(r["step"] == 0 and "eval/accuracy" in r for r in read_metrics(chain))  # the loaded model's
    main_in_processes(chain, 8, digits_data_dir, processes=1, init=init)  # saved by 2 processes, resumed in 1
    main_in_processes(chain, 12, digits_data_dir, processes=2, init=init)  # saved by 1 process, resumed in 2
    main_in_processes(tmp_path / "one", 12, digits_data_dir, processes=1, init=init)  # never interrupted
    # Steps 1-4 on two processes, 5-8 in one, 9-12 on two again: each step's loss is the uninterrupted run's,
    # so every resumed step read the global batch it would have read (a wrong position gives other batches).
    assert [r["step"] for r in read_metrics(chain) if "train/loss" in r] == list(range(1, 13))
    np.testing.assert_allclose(losses(chain), losses(tmp_path / "one"), rtol=2e-5)
    assert_close(params(chain, 12), params(tmp_path / "one", 12), atol=2e-4)
    assert_close(params(chain, 12, ema=True), params(tmp_path / "one", 12, ema=True), atol=2e-4)
    position = TrainCheckpoints(chain / "checkpoints").position(12)
    assert position == {"step": 12, "examples": 12 * BATCH, "process_count": 2, "global_batch_size": BATCH}
    assert not (chain / "checkpoints" / "12" / "data").exists()  # no per-process iterator files to match
