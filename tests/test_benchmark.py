"""The benchmark command: its figures against formulas and hand-computed values, its option errors, and one real
run of both sides end to end."""

import json
import sys
import time

import numpy as np
import pytest

from vit_jax.benchmark import __main__ as cli
from vit_jax.benchmark import jax_side
from vit_jax.benchmark.machine import CpuTime, cpu_load
from vit_jax.benchmark.workload import StepTimes, Workload, time_steps, utilisation
from vit_jax.native import onednn


def vit_matmul_flops(tokens: int, patches: int, patch: int, channels: int, width: int, mlp: int, layers: int,
                     classes: int) -> float:
    """Forward FLOPs of ViT's matrix products per image (a multiply-add is 2)."""
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp) + 2 * 2 * tokens * tokens * width
    return layers * per_layer + 2 * patches * patch * patch * channels * width + 2 * width * classes


def test_step_flops_are_the_matrix_products_plus_a_little_and_training_is_about_three_forwards():
    mesh = jax_side.make_mesh((("data", -1),))
    images, labels = np.zeros((2, 224, 224, 3), np.float32), np.zeros((2,), np.int32)
    infer = jax_side.step_flops(Workload("vit_jax", "Ti/16", 2, 224, "f32", "infer"), images, labels, mesh)
    train = jax_side.step_flops(Workload("vit_jax", "Ti/16", 2, 224, "f32", "train"), images, labels, mesh)
    products = 2 * vit_matmul_flops(197, 196, 16, 3, 192, 768, 12, 1000)
    assert 1.0 <= infer / products <= 1.06
    assert 2.9 <= train / infer <= 3.3


def test_summary_mfu_and_ratios_by_hand():
    summary = StepTimes(1.5, [0.5, 0.25, 1.0]).summary(batch_size=8)
    assert summary["step_seconds_median"] == 0.5
    assert (summary["images_per_second_median"], summary["images_per_second_min"],
            summary["images_per_second_max"]) == (16.0, 8.0, 32.0)
    assert utilisation(4e9, 0.5, 16e9) == {"flops_per_step": 4e9, "achieved_flops_per_second": 8e9,
                                           "ceiling_flops_per_second": 16e9, "mfu": 0.5}
    results = [{"side": "vit_jax", "key": "k", "images_per_second_median": 30.0},
               {"side": "timm", "key": "k", "images_per_second_median": 20.0},
               {"side": "vit_jax", "key": "alone", "images_per_second_median": 5.0}]
    assert cli.ratios(results) == {"k": 1.5}


def test_time_steps_compiles_once_warms_up_then_times_each_step():
    calls = []
    times = time_steps(lambda: calls.append("first"), lambda: calls.append("step"), steps=10, warmup=2)
    assert calls == ["first"] + ["step"] * 12
    assert len(times.seconds) == 10


def test_cpu_load_by_hand():
    # 2 s on 2 CPUs at 100 ticks/s = 400 ticks: 300 busy (this process 2.5 s of it), 60 idle, 40 stolen
    start, end = CpuTime(10.0, 1.0, 1000, 500, 7), CpuTime(12.0, 3.5, 1300, 560, 47)
    assert cpu_load(start, end, ticks_per_second=100) == pytest.approx(
        {"process_cores_busy": 1.25, "other_processes_fraction": 0.125, "steal_fraction": 0.1})
    assert cpu_load(None, end)["process_cores_busy"] is None
    short = cpu_load(start, CpuTime(10.1, 1.2, 1015, 504, 7), ticks_per_second=100)  # 19 ticks: too few to split
    assert short == pytest.approx({"process_cores_busy": 2.0, "other_processes_fraction": None, "steal_fraction": None})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_timed_steps_record_the_cores_kept_busy():
    def spin():
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    asleep = time_steps(lambda: None, lambda: time.sleep(0.05), steps=10, warmup=0).summary(1)
    busy = time_steps(lambda: None, spin, steps=50, warmup=0).summary(1)  # 1 s: enough ticks for the fractions
    assert asleep["process_cores_busy"] < 0.2 < busy["process_cores_busy"] <= 1.1  # one thread spins
    assert 0 <= busy["other_processes_fraction"] <= 1 and 0 <= busy["steal_fraction"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--steps", "5"], "--steps 5: at least 10"),
    (["--variants", "Q/16"], "--variants Q/16"),
    (["--image-size", "100"], "--variants Ti/16"),
    (["--batch-sizes", "0"], "--batch-sizes 0"),
    (["--attention-impl", "cudnn"], "--attention-impl cudnn with --dtypes f32: attention_impl='cudnn' needs dtype"),
])
def test_bad_options_exit_2_naming_the_value(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_measures_both_sides_and_writes_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    argv = ["--variants", "mu/16", "--image-size", "32", "--batch-sizes", "4", "--modes", "infer",
            "--dtypes", "f32", "--ceiling-size", "256", "--vs-timm", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["vit_jax.benchmark", *argv])
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert [(r["side"], r["mode"], r["dtype"]) for r in results] == [
        (side, "infer", "f32") for side in ("vit_jax", "timm")]
    for r in results:
        assert r["timed_steps"] == 10
        assert r["step_seconds_min"] <= r["step_seconds_median"] <= r["step_seconds_max"]
        assert r["images_per_second_median"] == pytest.approx(4 / r["step_seconds_median"])
        assert r["process_cores_busy"] > 0
        assert r["flops_per_step"] > 0 and 0 < r["mfu"] == pytest.approx(
            r["flops_per_step"] / r["step_seconds_median"] / r["ceiling_flops_per_second"])
    ours = [r for r in results if r["side"] == "vit_jax"]
    assert all(r["compile_seconds"] > 0 and r["xla_peak_bytes"] > 0 for r in ours)
    assert "--xla_cpu_experimental_ynn_fusion_type=" in ours[0]["xla_flags"]  # the float32 default
    timm = {r["key"]: r for r in results if r["side"] == "timm"}
    assert all(r["flops_per_step"] == timm[r["key"]]["flops_per_step"] for r in ours)
    assert report["ratios_vit_jax_over_timm"] == {
        r["key"]: pytest.approx(r["images_per_second_median"] / timm[r["key"]]["images_per_second_median"])
        for r in ours}
    printed = capsys.readouterr().out
    assert "vit_jax / timm" in printed
    if onednn.usable():  # the kernel of the products, where oneDNN computes them (an AMX one on AMX processors)
        assert ours[0]["onednn_kernel"].startswith(onednn._FAST) and ours[0]["onednn_kernel"] in printed


def test_largest_batch_under_a_budget_solves_the_affine_fit_and_steps_down_when_the_fit_is_optimistic():
    from vit_jax.benchmark.memory import largest_batch

    compiled = []

    def affine(batch):  # 1,000 fixed + 100 per example: 40 fit in 5,000 exactly
        compiled.append(batch)
        return 1000 + 100 * batch

    assert largest_batch(affine, 5000, probe=4) == (40, 5000)
    assert compiled == [4, 8, 40]  # two probes and the check
    # peaks that jump past batch 16: the check finds the solved batch over, and bisection finds 16
    assert largest_batch(lambda b: 1000 + 100 * b + (b > 16) * 10 * b * b, 5000, probe=4) == (16, 2600)
    assert largest_batch(lambda b: 9000 + b, 5000, probe=4) == (0, 0)  # nothing fits
