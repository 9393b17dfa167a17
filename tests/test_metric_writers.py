import json

import numpy as np

from tests.tensorboard_events import tensorboard_images, tensorboard_scalars
from vit_jax.metric_writers import MetricWriter, read_metrics


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=10)
    writer.write(5, {"train/loss": 1.5, "train/accuracy": 0.25})
    writer.write(10, {"eval/accuracy": 0.75})
    writer.close()
    assert read_metrics(tmp_path) == [{"step": 5, "train/loss": 1.5, "train/accuracy": 0.25},
                                      {"step": 10, "eval/accuracy": 0.75}]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] in (5, 10) for line in lines)
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["train/loss"] == [(5, 1.5)] and scalars["eval/accuracy"] == [(10, 0.75)]


def test_resume_drops_records_after_the_restored_step(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=30)
    for step in (10, 20, 30):
        writer.write(step, {"train/loss": float(step)})
    writer.close()
    resumed = MetricWriter(tmp_path, total_steps=30, start_step=20)
    resumed.write(30, {"train/loss": 3.0})
    resumed.close()
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == [(10, 10.0), (20, 20.0), (30, 3.0)]


def test_non_finite_values_are_written_as_strings(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=1)
    writer.write(1, {"train/loss": float("nan")})
    writer.close()
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": "nan"}]


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=1, enabled=False)
    writer.write(1, {"x": 1.0})
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_pictures_go_to_tensorboard_as_images(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=10)
    picture = np.zeros((6, 4, 3), np.uint8)
    picture[2, 1] = (255, 128, 0)
    writer.write_images(5, {"posemb_similarity": picture})
    writer.close()
    ((step, decoded),) = tensorboard_images(tmp_path)["pictures/posemb_similarity"]
    assert step == 5
    np.testing.assert_array_equal(decoded, picture)
