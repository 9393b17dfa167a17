"""k-NN evaluation: DINO's weighted vote against scikit-learn's neighbours and a hand-computed case, and the
command on the README run's workdir, whose representation through its own head gives its logged test accuracy."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from vit_jax.knn import TOP, knn_accuracy, main, normalised


def sklearn_accuracy(train, train_labels, test, test_labels, k, temperature, num_classes):
    """scikit-learn's cosine neighbours, each weighted exp(similarity / T) (its distance is 1 - similarity: the
    same weights times exp(-1 / T)); top-5 ranks the classes by those votes, ties to the lower class, and never
    counts a class no neighbour voted for."""
    weights = lambda distance: np.exp((1 - distance) / temperature)
    classifier = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights=weights)
    votes = np.zeros((len(test), num_classes))
    votes[:, np.unique(train_labels)] = classifier.fit(train, train_labels).predict_proba(test)
    own = votes[np.arange(len(test)), test_labels][:, None]
    rank = np.sum((votes > own) | ((votes == own) & (np.arange(num_classes) < test_labels[:, None])), axis=1)
    return np.mean(rank == 0), np.mean((own[:, 0] > 0) & (rank < TOP))


def test_votes_are_sklearns_cosine_weighted_neighbours(rng):
    """Clustered features of 7 classes (class 6 never in the bank), test rows in chunks of 9 (the last padded)."""
    centres = rng.standard_normal((7, 16))
    train_labels = rng.integers(0, 6, 400)
    test_labels = rng.integers(0, 7, 60)
    train = centres[train_labels] + 1.2 * rng.standard_normal((400, 16))
    test = (centres[test_labels] + 1.2 * rng.standard_normal((60, 16))) * rng.uniform(0.1, 10, (60, 1))  # any norm
    ks = (1, 4, 25, 400)
    for temperature in (0.07, 1.0):
        got = knn_accuracy(train, train_labels, test, test_labels, ks, temperature, num_classes=7,
                           similarities_per_chunk=9 * 400)
        assert [r.k for r in got] == list(ks)
        for result in got:
            expected = sklearn_accuracy(train, train_labels, test, test_labels, result.k, temperature, 7)
            assert (result.top1, result.top5) == pytest.approx(expected, abs=1e-12), (result, temperature)
        assert 0.3 < got[2].top1 < got[2].top5 < 1  # neither trivial nor saturated


def test_one_close_neighbour_outvotes_two_far_ones():
    """Similarities 0.99 (class 1) and 0.5, 0.5 (class 0): at T = 0.07 the votes are e^14.1 against 2 e^7.1, so
    class 1 wins, as a majority vote would not; at T = 10 the two far neighbours win."""
    angle = lambda degrees: [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]
    train = np.array([angle(np.degrees(np.arccos(0.99))), angle(60), angle(-60), angle(180)])
    labels = np.array([1, 0, 0, 2])
    np.testing.assert_allclose(normalised(train) @ np.array([1.0, 0.0]), [0.99, 0.5, 0.5, -1], atol=1e-6)
    test = np.array([[3.0, 0.0], [3.0, 0.0]])
    [sharp] = knn_accuracy(train, labels, test, np.array([1, 0]), ks=[3], temperature=0.07)
    [flat] = knn_accuracy(train, labels, test, np.array([1, 0]), ks=[3], temperature=10.0)
    assert (sharp.top1, sharp.top5, flat.top1, flat.top5) == (0.5, 1.0, 0.5, 1.0)
    [first] = knn_accuracy(train, labels, test[:1], np.array([1]), ks=[3], temperature=0.07)
    [second] = knn_accuracy(train, labels, test[:1], np.array([0]), ks=[3], temperature=10.0)
    assert (first.top1, second.top1) == (1.0, 1.0)
    [unvoted] = knn_accuracy(train, labels, test[:1], np.array([2]), ks=[3], temperature=0.07)  # class 2 is 4th
    assert (unvoted.top1, unvoted.top5) == (0.0, 0.0)
    [cold] = knn_accuracy(train, labels, test[:1], np.array([1]), ks=[3], temperature=0.005)  # e^198: no overflow
    assert (cold.top1, cold.top5) == (1.0, 1.0)


def test_padding_rows_of_the_bank_are_never_neighbours():
    """The bank is padded to a multiple of the devices with rows labelled -1: even one identical to the test row
    (the most similar possible) takes no vote. Here it would be the nearest and vote for the wrong class."""
    from vit_jax.knn import _correct

    bank = np.array([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], np.float32)  # similarities 0.8, 0.6, 0, 1
    labels = np.array([0, 1, 1, -1], np.int32)  # the last row: padding
    counts = _correct(np.array([[1.0, 0.0]], np.float32), np.array([0], np.int32), bank, labels, 0.07, ks=(1, 3),
                      num_classes=3)
    np.testing.assert_array_equal(counts, [[1, 1], [1, 1]])  # k = 3: class 0's e^0 against class 1's e^-2.9 + e^-11


def test_bad_options_are_one_line_before_any_model_is_read(digits_data_dir, capsys, tmp_path):
    common = ["--dataset=sklearn_digits", f"--data-dir={digits_data_dir}"]
    missing = str(tmp_path / "no_such.npz")  # never read: each error comes first
    for argv, message in [
        ([f"--checkpoint={missing}", *common, "--k", "0"], "--k 0: expected one or more neighbour counts from 1 to "
                                                           "the training split's 1257 images"),
        ([f"--checkpoint={missing}", *common, "--k", "10", "1258"], "--k 10 1258: expected"),
        ([f"--checkpoint={missing}", *common, "--temperature=0"], "--temperature 0.0: expected a positive number"),
        ([f"--checkpoint={missing}", *common, "--train-split=training"], "unknown split 'training'"),
        ([f"--checkpoint={missing}"], "not a vit_jax workdir, so --dataset must say what to evaluate on"),
        ([f"--checkpoint={missing}", *common, f"--out={tmp_path}"], "an existing directory; expected a file path"),
        ([f"--checkpoint={missing}", *common, "--data-threads=0"], "--data-threads 0: expected positive integers"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


@pytest.mark.xdist_group("readme_run")  # the worker that runs the README's main command
def test_the_readme_runs_representation_classifies_the_digits_by_its_neighbours(readme_run, capsys, tmp_path):
    """`python -m vit_jax.knn --checkpoint=WORKDIR` on the run's own dataset and splits: the representation it
    extracts, through the checkpoint's head, gives the run's logged final test accuracy exactly (the same view of
    the same images); its neighbours classify the digits about as well (a trained representation clusters by
    class) and the figures are scikit-learn's on that representation."""
    from vit_jax.checkpoint.trained_model import load_trained_model
    from vit_jax.data.sources import dataset_builder, open_split
    from vit_jax.frozen_features import representations

    workdir, _ = readme_run
    out = tmp_path / "knn.json"
    assert main([f"--checkpoint={workdir}", "--k", "1", "20", f"--out={out}", "--batch-size=100",
                 f"--features={tmp_path / 'features.npz'}"]) == 0
    printed = capsys.readouterr().out
    assert "k-NN on sklearn_digits (test: 360 images; neighbours from train: 1,257)" in printed
    report = json.loads(out.read_text())
    assert (report["train_split"], report["test_split"], report["num_train"], report["width"]) == ("train", "test",
                                                                                                   1257, 64)
    trained = load_trained_model(workdir)
    builder = dataset_builder("sklearn_digits", report["data_dir"])
    with np.load(tmp_path / "features.npz", allow_pickle=False) as saved:
        train, train_labels, test, test_labels = (saved[k] for k in ("train", "train_labels", "test", "test_labels"))
    assert train.shape == (1257, 64) and test.shape == (360, 64)
    np.testing.assert_array_equal(test_labels, [example["label"] for example in open_split(builder, "test")])
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    test_accuracy = [m["test/accuracy"] for m in logged if "test/accuracy" in m][-1]
    logits = test @ np.asarray(trained.params["head"]["kernel"]) + np.asarray(trained.params["head"]["bias"])
    assert np.mean(np.argmax(logits, 1) == test_labels) == pytest.approx(test_accuracy, abs=1e-9)
    for result in report["results"]:
        expected = sklearn_accuracy(train, train_labels, test, test_labels, result["k"], 0.07, 10)
        assert (result["top1"], result["top5"]) == pytest.approx(expected, abs=1e-12)
        assert f"{result['k']:>5} {result['top1']:>8.2%} {result['top5']:>8.2%}" in printed
    assert report["results"][1]["top1"] >= 0.95
    # colour images for this grayscale model: one line before any image is read
    for name in ("class_a", "class_b"):
        (tmp_path / "colour" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "colour" / name / "only.png")
    assert main([f"--checkpoint={workdir}", f"--dataset=folder:{tmp_path / 'colour'}",
                 f"--data-dir={tmp_path / 'tfds'}", "--k=1", "--test-split=train"]) == 2
    error = capsys.readouterr().err
    assert f"takes 1-channel images and dataset 'folder:{tmp_path / 'colour'}' has 3-channel ones: channels=1: " \
           f"cannot turn 3-channel images into 1-channel ones" in error
    # in bfloat16 (float32 parameters): the same directions to bfloat16's precision, the same neighbours but a few
    low, _ = representations(trained, open_split(builder, "test"), 64, dtype="bfloat16")
    assert np.min(np.sum(normalised(low) * normalised(test), axis=1)) > 0.999
    assert not np.array_equal(low, test)
    [bf16] = knn_accuracy(train, train_labels, low, test_labels, [20], num_classes=10)
    assert abs(bf16.top1 - report["results"][1]["top1"]) <= 3 / 360


@pytest.mark.slow
def test_two_processes_extract_what_one_process_does(tmp_path, digits_data_dir):
    """`--num-processes=2` on 127.0.0.1, two CPU devices each: every process reads its share of each split, all get
    every representation; process 0 alone prints and writes them, in each split's order, equal to one process's.
    The k-NN bank is split over the 4 devices (601 rows: 3 of padding, never neighbours) and votes as on one."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port, live_params, load_config_file, xla_env
    from vit_jax.checkpoint.npz import save_npz
    from vit_jax.checkpoint.trained_model import load_trained_model
    from vit_jax.data.sources import dataset_builder, open_split
    from vit_jax.from_config import model_from_config
    from vit_jax.frozen_features import representations

    model = model_from_config(load_config_file("digits"), 10)
    save_npz(live_params(model, np.zeros((1, 16, 16, 1), np.float32), seed=1), tmp_path / "digits.npz")
    port = free_port()
    command = [sys.executable, "-m", "vit_jax.knn", f"--checkpoint={tmp_path / 'digits.npz'}", "--dataset=sklearn_digits",
               f"--data-dir={digits_data_dir}", "--train-split=train[:601]", "--test-split=test[:150]", "--k", "5",
               "--batch-size=100", f"--out={tmp_path / 'knn.json'}",
               f"--features={tmp_path / 'features.npz'}", f"--coordinator-address=127.0.0.1:{port}",
               "--num-processes=2"]
    started = [subprocess.Popen([*command, f"--process-id={i}"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=xla_env("--xla_force_host_platform_device_count=2")) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in started]
    assert [p.returncode for p in started] == [0, 0], "".join(err[-3000:] for _, err in outputs)
    assert "k-NN on sklearn_digits" in outputs[0][0] and "k-NN" not in outputs[1][0]
    trained = load_trained_model(tmp_path / "digits.npz")
    builder = dataset_builder("sklearn_digits", digits_data_dir)
    with np.load(tmp_path / "features.npz") as saved:
        for split, name in (("train", "train[:601]"), ("test", "test[:150]")):
            features, labels = representations(trained, open_split(builder, name), 64)
            assert len(labels) == int(name[name.index(":") + 1:-1])
            np.testing.assert_array_equal(saved[f"{split}_labels"], labels)
            np.testing.assert_allclose(saved[split], features, rtol=1e-5, atol=1e-5, err_msg=split)
        [one] = knn_accuracy(saved["train"], saved["train_labels"], saved["test"], saved["test_labels"], [5])
    assert json.loads((tmp_path / "knn.json").read_text())["results"] == [
        {"k": 5, "top1": one.top1, "top5": one.top5}]
