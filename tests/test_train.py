import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import vit_jax.train
from tests.conftest import ROOT, run_main, tiny_digits_config
from tests.tensorboard_events import tensorboard_scalars
from vit_jax import predict, visualize
from vit_jax.build import train_iterator
from vit_jax.checkpoint import TrainCheckpoints
from vit_jax.checkpoint.manager import model_params
from vit_jax.checkpoint.pretrained import load_pretrained
from vit_jax.config import saved_config
from vit_jax.config_validation import ConfigError
from vit_jax.metric_writers import read_metrics
from vit_jax.optim import ema_params
from vit_jax.train import NonFiniteLossError, train_and_evaluate


def test_training_writes_metrics_tensorboard_checkpoints_and_resumes(tmp_path, digits_data_dir, monkeypatch):
    config = tiny_digits_config(digits_data_dir)

    def slow_after_step_10(setup, start_examples):  # the input pipeline falls behind for the last two windows
        for read, batch in enumerate(train_iterator(setup, start_examples)):
            if read >= 10 or read == 0:  # the first: a slow start (worker processes starting), not starvation
                time.sleep(1.0 if read == 0 else 0.2)
            yield batch

    monkeypatch.setattr(vit_jax.train, "train_iterator", slow_after_step_10)
    results = train_and_evaluate(config, tmp_path)
    assert results["eval/num_examples"] == 180 and results["test/num_examples"] == 360
    records = read_metrics(tmp_path)
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [5, 10, 15, 20]
    first_window = next(r for r in records if "train/loss" in r)
    for key in ("train/accuracy", "train/learning_rate", "train/grad_norm", "perf/images_per_second",
                "perf/step_seconds", "perf/data_wait_fraction"):
        assert key in first_window, key
    waits = {r["step"]: r["perf/data_wait_fraction"] for r in records if "perf/data_wait_fraction" in r}
    assert all(0 <= wait <= 1 for wait in waits.values())
    assert waits[15] > 0.5 and waits[20] > 0.5  # 0.2 s waits against tiny steps: the loop mostly waited
    assert waits[5] < 0.5  # the slow first batch is start-up, reported on its own
    assert [r["perf/first_batch_seconds"] >= 1.0 for r in records if "perf/first_batch_seconds" in r] == [True]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [10, 20]
    assert [r["step"] for r in records if "test/accuracy" in r] == [20]
    assert "eval/top5_accuracy" in records[-2]
    assert [step for step, _ in tensorboard_scalars(tmp_path)["train/loss"]] == [5, 10, 15, 20]
    assert TrainCheckpoints(tmp_path / "checkpoints").all_steps() == [15, 20]
    assert saved_config(tmp_path).model.variant == "Ti/4"

    again = train_and_evaluate(config, tmp_path)  # already finished: resumes at the end, tests again
    assert again["test/accuracy"] == results["test/accuracy"]
    assert [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r] == [5, 10, 15, 20]

    saved = (tmp_path / "config.json").read_text()  # another run in the same workdir: refused, nothing written
    for change, message in [("model.hidden_size=48,seed=3", r"model.hidden_size 64 there, 48 now, seed 0 there, 3 "
                                                            r"now; resume it with its own config"),
                            ("num_steps=10", r"config.num_steps = 10: the run in .* is at step 20 already")]:
        with pytest.raises(ConfigError, match=message):
            train_and_evaluate(tiny_digits_config(digits_data_dir, change), tmp_path)
    assert (tmp_path / "config.json").read_text() == saved


def test_a_folder_of_images_trains_end_to_end(tmp_path, rng):
    from PIL import Image

    for label, name in enumerate(["bright", "dark"]):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            size = tuple(rng.integers(10, 30, 2))  # images of their own sizes, resized by the pipeline
            pixels = rng.integers(128, 256, (*size, 3)) if label == 0 else rng.integers(0, 128, (*size, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    (tmp_path / "images" / "dark" / "corrupt.png").write_bytes(b"\x89PNG broken")
    config = tiny_digits_config(
        str(tmp_path / "tfds"),
        f"dataset=folder:{tmp_path / 'images'},train_split=train[:75%],eval_split=train[75%:],test_split=,"
        "image_size=16,pp.train_crop=inception,pp.flip=True,batch_size=8,eval_batch_size=8,num_steps=10",
    )
    results = train_and_evaluate(config, tmp_path / "run")
    assert results["eval/num_examples"] == 6  # 24 readable images, the corrupt one skipped
    assert "test/accuracy" not in results


@pytest.mark.parametrize("checkpoint_every", [1, 100])
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, digits_data_dir,
                                                                          checkpoint_every):
    config = tiny_digits_config(
        digits_data_dir,
        "optimizer.name=sgd,optimizer.learning_rate=1e30,optimizer.grad_clip_norm=0.0,optimizer.warmup_steps=0,"
        f"optimizer.schedule=constant,checkpoint_every={checkpoint_every},eval_every=100,label_smoothing=0.0",
    )
    # the loss, or first the update it makes: SGD at 1e30 can overflow the parameters while the loss is finite
    broken = r"(training loss|the largest parameter update) is (nan|inf) at step \d+; stopped without saving\. "
    if checkpoint_every == 100:  # diverges before its first checkpoint: nothing to keep, and it says so
        with pytest.raises(NonFiniteLossError, match=broken + r"No checkpoint had been saved yet") as error:
            train_and_evaluate(config, tmp_path)
        assert "step None" not in str(error.value)
        assert TrainCheckpoints(tmp_path / "checkpoints").all_steps() == []
        return
    with pytest.raises(NonFiniteLossError, match=broken + r"The last good checkpoint \(step (\d+)\) is kept") as error:
        train_and_evaluate(config, tmp_path)
    bad_step, good_step = map(int, re.search(r"step (\d+);.*step (\d+)\)", str(error.value)).groups())
    assert good_step == bad_step - 1
    steps = TrainCheckpoints(tmp_path / "checkpoints").all_steps()
    assert max(steps) == good_step
    restored = TrainCheckpoints(tmp_path / "checkpoints").restore(good_step)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored["params"]))


# ---------------------------------------------------------------------------------------------------------------
# Whole runs in fresh processes: the command a user types.

# With the step's augmentations (random erasing, Mixup/CutMix) and a moving average of the weights: an interrupted
# run must redraw them exactly as the uninterrupted one did, and average the same. (RandAugment, drawn per example
# from the example's own seed like the crops, would take the digits off the batched in-memory path this covers.)
RUN = ("--config=configs/digits.py:num_steps=30,log_every=1,eval_every=10,checkpoint_every=5,log_pictures=none,"
       "random_erasing.prob=0.25,mixup.mixup_alpha=0.8,mixup.cutmix_alpha=1.0,ema.decay=0.9")


def final_params(workdir, step=30, ema=False):
    """The run's parameters at `step`, or (`ema`) the weights the workdir stands for: their moving average."""
    state = TrainCheckpoints(workdir / "checkpoints").restore(step)
    if ema:
        assert ema_params(state["opt_state"]) is not None
        return model_params(state)
    return state["params"]


def assert_same_params(a, b, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol), a, b)


@pytest.fixture
def uninterrupted(tmp_path_factory, digits_data_dir):
    """The run the interrupted ones must match; it keeps freed host memory (`vit_jax.host_memory`), which they, with
    configs/digits.py's setting, do not: the parameters must not depend on it."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run_main(workdir, RUN, f"--config.data_dir={digits_data_dir}", "--config.keep_host_memory=True")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def start_main(workdir, data_dir):
    command = [sys.executable, "-m", "vit_jax.main", f"--workdir={workdir}", RUN, f"--config.data_dir={data_dir}"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process, workdir, step, timeout=240):
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / str(step)).is_dir():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_then_killed_resumes_each_time_and_ends_with_the_same_parameters(
        tmp_path, uninterrupted, digits_data_dir):
    process = start_main(tmp_path, digits_data_dir)
    wait_for_checkpoint(process, tmp_path, 5)
    process.send_signal(signal.SIGTERM)  # a preemption notice: save now, exit 143
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    saved = int(re.search(r"SIGTERM received: saved step (\d+)", stderr).group(1))
    assert TrainCheckpoints(tmp_path / "checkpoints").latest_step() == saved
    process = start_main(tmp_path, digits_data_dir)  # resumes at `saved`, then dies without warning
    killed_after = (saved // 5 + 2) * 5
    assert killed_after < 30
    wait_for_checkpoint(process, tmp_path, killed_after)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "checkpoints" / "30").exists()
    resumed = run_main(tmp_path, RUN, f"--config.data_dir={digits_data_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    assert_same_params(final_params(tmp_path), final_params(uninterrupted))
    assert_same_params(final_params(tmp_path, ema=True), final_params(uninterrupted, ema=True))
    assert_same_params(load_pretrained(tmp_path).params, final_params(tmp_path, ema=True), atol=0)  # what predict,
    # the exports and fine-tuning read
    assert read_metrics(tmp_path)[-1]["test_ema/num_examples"] == 360
    kept = lambda w: [r["perf/keeps_host_memory"] for r in read_metrics(w) if "perf/keeps_host_memory" in r]
    assert kept(uninterrupted) == [1.0] and kept(tmp_path) == []
    losses = lambda w: [(r["step"], r["train/loss"]) for r in read_metrics(w) if "train/loss" in r]
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 31))  # no step logged twice after either resume
    np.testing.assert_allclose([l for _, l in losses(tmp_path)], [l for _, l in losses(uninterrupted)], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.xdist_group("readme_run")
def test_readme_main_command_trains_digits_to_98_percent(readme_run, tmp_path, capsys):
    workdir, result = readme_run
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"final test accuracy: ([\d.]+)% on 360 sklearn_digits test images", result.stdout)[1])
    assert accuracy >= 98.0
    assert list(workdir.glob("events.out.tfevents.*")) and (workdir / "metrics.jsonl").exists()
    assert TrainCheckpoints(workdir / "checkpoints").latest_step() == 1200

    # the README's predict and visualize commands on that run (their main functions), with the README's digit
    capsys.readouterr()
    digit = str(ROOT / "docs" / "pictures" / "digit_3.png")
    assert predict.main([f"--workdir={workdir}", digit]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "3"  # the top class
    assert visualize.main([f"--workdir={workdir}", f"--image={digit}", f"--out={tmp_path / 'pictures'}"]) == 0
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 6


def test_flexivit_compiles_one_step_per_patch_size_and_evaluates_at_each(tmp_path, digits_data_dir):
    from vit_jax.flexi import draw_patch_size, flexi_probabilities

    config = tiny_digits_config(digits_data_dir, "image_size=8,pp.crop_padding=1,num_steps=12,log_every=6,"
                                                 "eval_every=6,checkpoint_every=6,flexi.patch_sizes=(2,4,8)")
    results = train_and_evaluate(config, tmp_path)
    sizes = ((2, 2), (4, 4), (8, 8))
    drawn = {draw_patch_size(0, step, sizes, flexi_probabilities(sizes, ()))[0] for step in range(1, 13)}
    compiled = [r["flexi/compiled_patch_size"] for r in read_metrics(tmp_path) if "flexi/compiled_patch_size" in r]
    assert sorted(compiled) == sorted(drawn) and len(drawn) > 1  # each drawn size compiled once, then reused
    per_size = [results[f"eval/p{p}/accuracy"] for p in (2, 4, 8)]
    assert results["eval/accuracy"] == pytest.approx(np.mean(per_size))
    assert {f"test/p{p}/accuracy" for p in (2, 4, 8)} <= set(results)


def test_flexivit_with_only_the_models_own_patch_size_trains_exactly_like_it(tmp_path, digits_data_dir):
    dedicated = train_and_evaluate(tiny_digits_config(digits_data_dir, "num_steps=10"), tmp_path / "dedicated")
    flexi = train_and_evaluate(tiny_digits_config(digits_data_dir, "num_steps=10,flexi.patch_sizes=(4,)"),
                               tmp_path / "flexi")
    losses = lambda w: [r["train/loss"] for r in read_metrics(w) if "train/loss" in r]
    assert losses(tmp_path / "flexi") == losses(tmp_path / "dedicated")
    assert flexi["test/p4/accuracy"] == dedicated["test/accuracy"]


def test_any_resolution_model_is_evaluated_at_every_listed_size_without_rebuilding(tmp_path, digits_data_dir):
    config = tiny_digits_config(digits_data_dir, "num_steps=10,eval_image_sizes=((16,16),(12,12),(16,24))")
    results = train_and_evaluate(config, tmp_path)
    for split in ("eval", "test"):
        for size in ("12", "16x24"):
            assert 0.0 <= results[f"{split}/r{size}/accuracy"] <= 1.0
        # At the training resolution the resizing model is the fixed-grid one: the same numbers.
        assert results[f"{split}/r16/loss"] == results[f"{split}/loss"]
        assert results[f"{split}/r16/accuracy"] == results[f"{split}/accuracy"]
    assert results["eval/r12/loss"] != results["eval/loss"]
