import csv
import json

import pytest

from tests.conftest import ROOT
from vit_jax.sweep import load_sweep, run_sweep
from vit_jax.sweep_points import format_value, point_name, sweep_points
from vit_jax.sweep_report import write_report

SWEEP = '''
"""A tiny patch-size sweep for tests."""
from vit_jax.config import base_config, model_config


def get_config(arg=None):
    c = base_config()
    c.image_size = (8, 8)
    c.pp.train_crop, c.pp.flip = "none", False
    c.model = model_config("Ti/4", hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, classifier="gap")
    c.num_steps, c.batch_size, c.eval_batch_size = 10, 32, 64
    c.log_every = c.eval_every = c.checkpoint_every = 5
    c.log_pictures = "none"
    c.optimizer.warmup_steps = 2
    return c


def get_sweep(arg=None):
    points = [{"model.patch_size": (p, p), "seed": 0} for p in (4, 8, 3)]  # 3 does not divide 8: it fails
    if arg == "flexi":
        points.append({"name": "flexi", "flexi.patch_sizes": (4, 8), "model.posemb_grid": (2, 2)})
    return points
'''


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "tiny_sweep.py"
    path.write_text(SWEEP)
    return path


def test_point_names_read_like_their_overrides():
    assert point_name({"model.patch_size": (2, 2), "seed": 0}) == "patch_size-2_seed-0"
    assert point_name({"model.patch_size": (2, 4), "optimizer.learning_rate": 0.001}) == "patch_size-2x4_learning_rate-0.001"
    assert (format_value((8, 8)), format_value("adamw")) == ("8", "adamw")


def test_sweep_files_are_checked(tmp_path, sweep_file):
    module, arg = load_sweep(f"{sweep_file}:flexi")
    assert arg == "flexi" and [p.name for p in sweep_points(module, arg)] == [
        "patch_size-4_seed-0", "patch_size-8_seed-0", "patch_size-3_seed-0", "flexi"]
    (tmp_path / "plain.py").write_text("def get_config(arg=None): return None\n")
    with pytest.raises(ValueError, match="has no get_sweep"):
        load_sweep(str(tmp_path / "plain.py"))
    (tmp_path / "twins.py").write_text("def get_sweep(arg=None): return [{'seed': 0}, {'seed': 0}]\n")
    with pytest.raises(ValueError, match=r"share folder names \['seed-0'\]"):
        sweep_points(*load_sweep(str(tmp_path / "twins.py")))


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_sweep_runs_every_point_records_failures_writes_the_report_and_skips_finished_points(
        tmp_path, sweep_file, digits_data_dir):
    module, arg = load_sweep(str(sweep_file))
    base = module.get_config()
    base.data_dir = digits_data_dir
    points = sweep_points(module, arg)
    statuses = run_sweep(base, points, tmp_path / "sweep")
    assert [s["status"] for s in statuses] == ["done", "done", "failed"]
    assert "config.image_size = (8, 8): not a multiple of the patch size 3x3" in statuses[2]["error"]

    paths = write_report(tmp_path / "sweep", points)
    assert {p.name for p in paths} == {"results.csv", "results.md", "accuracy_vs_patch_size.png",
                                       "accuracy_vs_gflops.png", "throughput_vs_patch_size.png",
                                       "training_curves.png"}
    rows = read_csv(tmp_path / "sweep" / "results.csv")
    assert [(r["point"], r["patch_size"], r["status"], r["tokens_per_image"]) for r in rows] == [
        ("patch_size-4_seed-0", "4", "done", "4"), ("patch_size-8_seed-0", "8", "done", "1"),
        ("patch_size-3_seed-0", "", "failed", "")]
    for r in rows[:2]:
        metrics = [json.loads(line) for line in (tmp_path / "sweep" / r["point"] / "metrics.jsonl").open()]
        evals = [m["eval/accuracy"] for m in metrics if "eval/accuracy" in m]
        assert float(r["final_eval_accuracy"]) == evals[-1] and float(r["best_eval_accuracy"]) == max(evals)
        assert float(r["gflops_per_image"]) > 0 and float(r["images_per_second"]) > 0 and float(r["wall_seconds"]) > 0
    assert float(rows[0]["gflops_per_image"]) > float(rows[1]["gflops_per_image"])  # 4 tokens cost more than 1
    # Width 16, grayscale: the 8x8 kernel has 48 more pixels than the 4x4 one, the 1-token table 3 fewer rows.
    assert int(rows[1]["params"]) - int(rows[0]["params"]) == 48 * 16 - 3 * 16
    markdown = (tmp_path / "sweep" / "results.md").read_text()
    assert "| patch_size-3_seed-0 |  |  | failed (ConfigError: config.image_size = (8, 8)" in markdown

    before = {p.name: (tmp_path / "sweep" / p.name / "metrics.jsonl").read_text() for p in points[:2]}
    again = run_sweep(base, points, tmp_path / "sweep")
    assert [s["status"] for s in again] == ["done", "done", "failed"]
    assert [s["wall_seconds"] for s in again[:2]] == [s["wall_seconds"] for s in statuses[:2]]  # skipped
    assert before == {p.name: (tmp_path / "sweep" / p.name / "metrics.jsonl").read_text() for p in points[:2]}


@pytest.mark.slow
def test_points_run_one_per_process_then_collect(tmp_path, sweep_file, digits_data_dir):
    import subprocess
    import sys

    command = [sys.executable, "-m", "vit_jax.sweep", f"--config={sweep_file}:flexi", f"--workdir={tmp_path / 's'}",
               f"--config.data_dir={digits_data_dir}"]
    result = subprocess.run([*command, "--point=3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "s").iterdir() if p.is_dir()] == ["flexi"]
    collected = subprocess.run([*command, "--collect"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert collected.returncode == 0, collected.stderr[-3000:]
    rows = read_csv(tmp_path / "s" / "results.csv")
    flexi = [(r["kind"], r["patch_size"], r["tokens_per_image"]) for r in rows if r["point"] == "flexi"]
    assert flexi == [("FlexiViT", "4", "4"), ("FlexiViT", "8", "1")]  # evaluated at both sizes
    assert {r["status"] for r in rows if r["point"] != "flexi"} == {"pending"}
