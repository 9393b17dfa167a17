"""`config.extra_evals`: other datasets scored at every evaluation of a run, against the run's own test metrics and
against `python -m vit_jax.evaluate` scoring the final checkpoint (an independent path: no train-step machinery)."""

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tests.conftest import tiny_digits_config
from vit_jax import config_validation as cv
from vit_jax.data.sources import dataset_builder, open_split
from vit_jax.evaluate import main as evaluate
from vit_jax.fewshot import main as fewshot
from vit_jax.train import train_and_evaluate


class DigitsRealLabels(tfds.core.GeneratorBasedBuilder):
    """Digits laid out as TFDS's imagenet2012_real: `original_label` and `real_label` (a set, maybe empty)."""
    VERSION = tfds.core.Version("1.0.0")
    EXAMPLES: list = []  # (PNG bytes, original label, ReaL labels), set before it is prepared

    def _info(self):
        names = [str(d) for d in range(10)]
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "original_label": tfds.features.ClassLabel(names=names),
            "real_label": tfds.features.Sequence(tfds.features.ClassLabel(names=names))}))

    def _split_generators(self, dl_manager):
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        for i, (png, original, real) in enumerate(self.EXAMPLES):
            yield i, {"image": png, "original_label": original, "real_label": real}


def digits_real_labels(data_dir, tmp_path):
    """The first 60 test digits, each with a ReaL set: its own label and its neighbour's, its neighbour's only, or
    none (so hits, misses and images without ReaL labels all occur)."""
    source = open_split(dataset_builder("sklearn_digits", data_dir), "test")
    examples = []
    for i in range(60):
        label = int(source[i]["label"])
        path = tmp_path / f"{i}.png"
        Image.fromarray(source[i]["image"][:, :, 0]).save(path)
        real = [[label, (label + 1) % 10], [(label + 1) % 10], []][i % 3]
        examples.append((path.read_bytes(), label, real))
    DigitsRealLabels.EXAMPLES = examples
    DigitsRealLabels(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_extra_datasets_are_scored_at_every_evaluation_as_evaluate_scores_the_checkpoint(digits_data_dir, tmp_path,
                                                                                        capsys):
    """The test split as an extra evaluation gives the run's own test metrics; a subset of classes and a dataset
    with ReaL labels give what `python -m vit_jax.evaluate` gives on the final checkpoint, a few-shot evaluation
    what `python -m vit_jax.fewshot` gives."""
    digits_real_labels(digits_data_dir, tmp_path)
    config = tiny_digits_config(digits_data_dir)
    config.extra_evals.same = dict(dataset="sklearn_digits", split="test")
    config.extra_evals.some = dict(dataset="sklearn_digits", split="test", classes=["3", "5", "8"])
    config.extra_evals.real = dict(dataset="digits_real_labels", split="validation")
    config.extra_evals.few = dict(dataset="sklearn_digits", split="test", fewshot_split="train", shots=(1, 5),
                                  seeds=2)
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [m for m in logged if "eval/accuracy" in m]
    assert [m["step"] for m in evaluations] == [10, 20]
    assert all({"same/accuracy", "some/accuracy", "real/real_accuracy", "few/1shot_accuracy",
                "few/5shot_accuracy"} <= set(m) for m in evaluations)
    final, test = evaluations[-1], [m for m in logged if "test/accuracy" in m][-1]
    for name in ("loss", "accuracy", "top5_accuracy", "num_examples"):
        assert final[f"same/{name}"] == pytest.approx(test[f"test/{name}"], rel=1e-6), name
    assert "some/top5_accuracy" not in final  # three classes

    (tmp_path / "some.txt").write_text("3\n5\n8\n")
    for name, extra in (("some", [f"--classes={tmp_path / 'some.txt'}"]),
                        ("real", ["--dataset=digits_real_labels", "--split=validation"])):
        out = tmp_path / f"{name}.json"
        assert evaluate([f"--checkpoint={workdir}", f"--out={out}", *extra]) == 0
        report = json.loads(out.read_text())
        assert final[f"{name}/accuracy"] == pytest.approx(report["top1"], abs=1e-9), name
        assert final[f"{name}/loss"] == pytest.approx(report["loss"], rel=1e-5), name
        assert final[f"{name}/num_examples"] == report["count"], name
    assert final["real/real_accuracy"] == pytest.approx(report["real_top1"], abs=1e-9)
    assert final["real/real_num_examples"] == report["real_count"] == 40  # a third of the 60 have no ReaL labels
    out = tmp_path / "fewshot.json"
    assert fewshot([f"--checkpoint={workdir}", "--shots", "1", "5", "--seeds=2", f"--out={out}"]) == 0
    for result in json.loads(out.read_text())["results"]:
        assert final[f"few/{result['shots']}shot_accuracy"] == pytest.approx(result["top1"], abs=1e-9)
    capsys.readouterr()


@pytest.mark.parametrize("extra, message", [
    (dict(eval=dict(dataset="sklearn_digits", split="test")), "config.extra_evals.eval = .*: expected a name of "
                                                               "lowercase letters, digits and _"),
    (dict(v2=dict(dataset="sklearn_digits", splits="test")), "config.extra_evals.v2 = .*: expected dict\\(dataset=..., "
                                                             "split=...\\[, data_dir=..., classes=...\\]\\)"),
    (dict(v2=dict(dataset="nope_not_a_dataset", split="test")), "config.extra_evals.v2.dataset = 'nope_not_a_dataset'"
                                                                ": unknown dataset 'nope_not_a_dataset'"),
    (dict(v2=dict(dataset="sklearn_digits", split="tset")), "config.extra_evals.v2.split = 'tset': unknown split "
                                                            "'tset'"),
    (dict(few=dict(dataset="sklearn_digits", split="test", fewshot_split="tarin")),
     "config.extra_evals.few.fewshot_split = 'tarin': unknown split 'tarin'"),
    (dict(few=dict(dataset="sklearn_digits", split="test", fewshot_split="train", shots=(0, 5))),
     "config.extra_evals.few.shots = \\(0, 5\\): shots 0 5: expected one or more positive counts"),
    (dict(few=dict(dataset="sklearn_digits", split="test", fewshot_split="train", classes=["3"])),
     "config.extra_evals.few.classes = \\['3'\\]: not used by a few-shot evaluation"),
    (dict(v2=dict(dataset="sklearn_digits", split="test", classes=["3", "cat"])),
     "config.extra_evals.v2.classes = \\['3', 'cat'\\]: classes: 1 of 2 are neither a class name nor a column of the "
     "model \\(sklearn_digits\\)'s 10-class head \\(e.g. 'cat'\\)"),
])
def test_bad_extra_evaluations_are_one_line_before_anything_compiles(extra, message, digits_data_dir):
    config = tiny_digits_config(digits_data_dir)
    for name, entry in extra.items():
        config.extra_evals[name] = entry
    with pytest.raises(cv.ConfigError, match=message):
        cv.validate(config, 1, 1)


def test_colour_images_for_a_grayscale_model_are_refused(digits_data_dir, tmp_path):
    for name in ("a", "b"):
        (tmp_path / "colour" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "colour" / name / "x.png")
    config = tiny_digits_config(digits_data_dir)
    config.extra_evals.colour = dict(dataset=f"folder:{tmp_path / 'colour'}", split="train")
    with pytest.raises(cv.ConfigError, match=re.escape("config.extra_evals.colour.dataset = 'folder:") +
                       ".*channels=1: cannot turn 3-channel images into 1-channel ones"):
        cv.validate(config, 1, 1)
