"""The input-pipeline benchmark command: its JPEGs, both sides end to end on a few images, its option errors."""

import json

import numpy as np
import pytest
from PIL import Image

from vit_jax.benchmark import input_pipeline


def test_the_jpegs_are_imagenet_shaped_photographs(tmp_path):
    root = input_pipeline.write_jpeg_folder(tmp_path / "jpegs", 6)
    files = sorted((root / "train").rglob("*.jpg"))
    assert len(files) == 6 and len({f.parent.name for f in files}) == 6  # one class folder each (8 classes)
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and max(image.size) == 500
            assert 3 / 4 - 0.01 <= image.size[0] / image.size[1] <= 4 / 3 + 0.01
            assert np.asarray(image).std() > 20  # photographic content, not a flat colour
    before = [f.stat().st_mtime_ns for f in files]
    input_pipeline.write_jpeg_folder(tmp_path / "jpegs", 6)  # complete: kept as written
    assert [f.stat().st_mtime_ns for f in files] == before


def test_both_sides_run_in_fresh_processes_and_write_the_comparison(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    assert input_pipeline.main([
        "--workers", "0", "--sides", "grain", "torchvision_uint8", "--num-images", "8", "--batch-size", "4",
        "--warmup", "1", "--batches", "2", "--repeats", "1", "--images", str(tmp_path / "jpegs"),
        "--data-dir", str(tmp_path / "tfds"), "--out", str(out), "--rand-augment", "rand-m9-mstd0.5-inc1"]) == 0
    report = json.loads(out.read_text())
    assert report["rand_augment"] == "rand-m9-mstd0.5-inc1"  # both sides, DeiT's RandAugment after the flip
    by_side = {r["side"]: r for r in report["results"]}
    assert by_side["grain"]["batch_shape"] == [4, 224, 224, 3] and by_side["grain"]["dtype"] == "uint8"
    assert by_side["torchvision_uint8"]["batch_shape"] == [4, 3, 224, 224]
    assert all(r["images"] == 8 and r["images_per_s"] > 0 and r["images_per_cpu_s"] > 0 for r in report["results"])
    grain = next(r for r in report["summary"] if r["side"] == "grain")
    assert grain["vs_torchvision"] == pytest.approx(
        by_side["grain"]["images_per_s"] / by_side["torchvision_uint8"]["images_per_s"])
    assert report["command"].startswith("python -m vit_jax.benchmark.input_pipeline --workers 0")
    assert "grain / torchvision_uint8" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--workers", "-1"], "--workers -1: expected >= 0"),
    (["--batch-size", "0"], "--batch-size 0: expected a positive integer"),
    (["--warmup", "0"], "--warmup 0: expected >= 1"),
    (["--rand-augment", "rand-x9"], "--rand-augment: rand_augment 'rand-x9': section 'x9'"),
])
def test_bad_options_exit_2_naming_the_value(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        input_pipeline.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
