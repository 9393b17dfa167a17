"""The resolution-transfer study (train, evaluate at other resolutions per resize method, fine-tune, report) and
its bundled multi-scale task, `cluttered_digits`."""

import json

import numpy as np
import pytest

from vit_jax.data.cluttered_digits import DIGIT_SIZES, PER_IMAGE, SIZE, ClutteredDigits, cluttered_canvas
from vit_jax.data.digits import split_indices
from vit_jax.data.moving_digits import digit_images


def test_a_canvas_holds_the_digit_whole_at_a_size_in_range_and_is_reproducible():
    """A white 8x8 'digit' among empty clutter: one bright square of a side in DIGIT_SIZES (bilinear keeps a
    constant image constant), plus one-pixel strokes; the same generator state gives the same canvas."""
    digit, empty = np.full((8, 8), 255, np.uint8), np.zeros((3, 8, 8), np.uint8)
    canvas = cluttered_canvas(digit, empty, np.random.default_rng(5))[..., 0]
    assert canvas.shape == (SIZE, SIZE)
    square_rows = np.nonzero((canvas == 255).sum(axis=1) >= DIGIT_SIZES[0])[0]
    side = len(square_rows)
    assert DIGIT_SIZES[0] <= side <= DIGIT_SIZES[1] and np.all(np.diff(square_rows) == 1)
    assert ((canvas[square_rows] == 255).sum(axis=1) >= side).all()  # every row of the square spans its side
    np.testing.assert_array_equal(canvas, cluttered_canvas(digit, empty, np.random.default_rng(5))[..., 0])


def test_examples_follow_the_digits_splits_and_labels():
    images, labels = digit_images()
    indices = split_indices()["validation"][:3]
    examples = list(ClutteredDigits._generate_examples(None, "validation", indices))  # noqa: the builder's own code
    assert len(examples) == 3 * PER_IMAGE["validation"]
    assert [e["label"] for _, e in examples] == [int(labels[i]) for i in indices for _ in range(PER_IMAGE["validation"])]
    assert len({key for key, _ in examples}) == len(examples)


STUDY = '''
from pathlib import Path
from vit_jax.config import load_config_file

def get_config(arg=None):
    config = load_config_file("{digits}")
    config.num_steps, config.eval_every, config.checkpoint_every, config.log_every = 8, 8, 8, 4
    config.batch_size, config.eval_batch_size, config.log_pictures = 32, 128, "none"
    config.model.posemb_grid = (4, 4)
    config.data_dir = "{data_dir}"
    return config

def get_sweep(arg=None):
    return [{{"model.posemb": "learn", "seed": 0}}, {{"model.posemb": "rope_axial", "seed": 0}}]

def get_study(arg=None):
    return dict(sizes=((8, 8), (16, 16)), methods=("bilinear_align_corners", "bicubic"), split="test",
                finetune_steps=2)
'''


@pytest.fixture(scope="module")
def study(tmp_path_factory, digits_data_dir):
    """A two-point study on the digits (learned table, RoPE), 8 steps each, through the command a user types."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from vit_jax.resolution_study import study_of
    from vit_jax.sweep import load_sweep
    from vit_jax.sweep_points import sweep_points

    root = tmp_path_factory.mktemp("study")
    config_file = root / "study.py"
    config_file.write_text(STUDY.format(digits=ROOT / "configs" / "digits.py", data_dir=digits_data_dir))
    command = [sys.executable, "-m", "vit_jax.sweep", f"--config={config_file}", f"--workdir={root / 'out'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    module, arg = load_sweep(str(config_file))
    points = sweep_points(module, arg)
    results = {p.name: json.loads((root / "out" / p.name / "transfer.json").read_text()) for p in points}
    return root / "out", points, study_of(module, arg), result.stdout, results


@pytest.mark.xdist_group("study")
def test_each_point_is_evaluated_at_every_size_learned_tables_once_per_method_then_fine_tuned(study):
    out, points, spec, stdout, results = study
    assert stdout.count("  done") == 2 and stdout.count("evaluating") == 2
    learn, rope = results["posemb-learn_seed-0"], results["posemb-rope_axial_seed-0"]
    direct = lambda rows: sorted((tuple(r["size"]), r["method"]) for r in rows if not r["finetuned"])
    assert direct(learn) == [((8, 8), "bicubic"), ((8, 8), "bilinear_align_corners"), ((16, 16), "bicubic"),
                             ((16, 16), "bilinear_align_corners")]
    assert direct(rope) == [((8, 8), None), ((16, 16), None)]
    for rows, name in ((learn, "posemb-learn_seed-0"), (rope, "posemb-rope_axial_seed-0")):
        tuned = [r for r in rows if r["finetuned"]]  # only at the size it was not trained at
        assert [tuple(r["size"]) for r in tuned] == [(8, 8)]
        assert (out / name / "finetune_8x8" / "metrics.jsonl").exists()


@pytest.mark.xdist_group("study")
def test_at_the_training_size_the_study_measures_what_the_run_measured(study):
    """At 16x16 nothing is resized: every method gives the run's own final test accuracy (its metrics.jsonl), to
    one image (the study evaluates with the `xla` attention kernel, the run with `einsum`: rounding can flip a
    near-tie)."""
    out, _, _, _, results = study
    for name, rows in results.items():
        final = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        test = [m["test/accuracy"] for m in final if "test/accuracy" in m][-1]
        at_16 = [r["accuracy"] for r in rows if r["size"] == [16, 16] and not r["finetuned"]]
        assert at_16 and all(a == pytest.approx(test, abs=1.01 / 360) for a in at_16)


@pytest.mark.xdist_group("study")
def test_a_rerun_measures_nothing_again_and_the_report_has_a_row_per_encoding_and_method(study):
    from vit_jax.resolution_study import evaluate_point

    out, points, spec, stdout, results = study
    before = (out / points[0].name / "transfer.json").stat().st_mtime_ns
    assert evaluate_point(out / points[0].name, spec) == results[points[0].name]
    assert (out / points[0].name / "transfer.json").stat().st_mtime_ns == before
    written = {line.split("/")[-1] for line in stdout.splitlines() if line.startswith("wrote ")}
    assert written == {"transfer.csv", "transfer.md", "transfer_direct.png", "transfer_finetuned.png"}
    table = (out / "transfer.md").read_text()
    for row in ("| learn (bilinear_align_corners) |", "| learn (bicubic) |", "| rope_axial |"):
        assert row in table
    assert "| encoding | 8x8 | 16x16 |" in table
    csv_rows = (out / "transfer.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + sum(len(r) for r in results.values())


@pytest.mark.xdist_group("study")
def test_fine_tuning_a_model_that_resizes_its_table_at_run_time_keeps_the_table_at_its_grid(study, tmp_path):
    """configs/finetune.py from a workdir whose table is stored at `posemb_grid` (4x4), at another resolution:
    the table loads as stored (no resize at load: the model resizes it in the forward pass) and trains."""
    from tests.conftest import ROOT
    from vit_jax.checkpoint.pretrained import load_pretrained
    from vit_jax.config import load_config_file
    from vit_jax.train import train_and_evaluate

    source = study[0] / "posemb-learn_seed-0"
    config = load_config_file(ROOT / "configs" / "finetune.py", f"init={source},res=8,steps=1")
    config.log_pictures, config.test_split = "none", ""
    assert tuple(config.model.posemb_grid) == (4, 4)
    train_and_evaluate(config, tmp_path / "ft")
    tuned = load_pretrained(tmp_path / "ft")
    assert tuned.grid == (4, 4)
    assert tuned.params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 16, 64)  # gap: no class row
