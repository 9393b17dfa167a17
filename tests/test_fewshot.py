"""`python -m vit_jax.fewshot`: big_vision's few-shot least-squares evaluation, against scikit-learn's ridge
regression on the same standardised features and on the README run's representation."""

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from vit_jax.fewshot import BIAS_CONSTANT, draw_shots, least_squares_outputs, main


def ridge_outputs(x, y, x_test, num_classes, l2_reg):
    """scikit-learn's ridge (no intercept: the constant feature is the bias) on big_vision's inputs."""
    mean, std = x.mean(0), x.std(0) + 1e-5
    padded = lambda a: np.hstack([(a - mean) / std, np.full((len(a), 1), BIAS_CONSTANT)])  # noqa: E731
    ridge = Ridge(alpha=l2_reg, fit_intercept=False, solver="cholesky")
    ridge.fit(padded(x), 2.0 * np.eye(num_classes)[y] - 1.0)
    return ridge.predict(padded(x_test))


@pytest.mark.parametrize("num_train", [40, 7])  # more images than features, and fewer (the other system)
def test_the_fit_is_ridge_regression_on_standardised_features_with_a_bias_feature(num_train):
    rng = np.random.default_rng(num_train)
    x, x_test = rng.normal(size=(num_train, 12)) * 3 + 1, rng.normal(size=(30, 12))
    y = rng.integers(0, 4, num_train)
    for l2_reg in (1024.0, 0.5):
        np.testing.assert_allclose(least_squares_outputs(x, y, x_test, 4, l2_reg), ridge_outputs(x, y, x_test, 4,
                                                                                                  l2_reg),
                                   rtol=1e-7, atol=1e-9)


def test_shots_are_drawn_per_class_reproducibly():
    labels = np.array([0, 1, 2, 0, 1, 0, 0, 2, 1, 1, 0])
    chosen = draw_shots(labels, 3, 3, seed=0)
    assert [int(np.sum(labels[chosen] == c)) for c in range(3)] == [3, 3, 2]  # class 2 has two images
    assert len(set(chosen.tolist())) == len(chosen)
    np.testing.assert_array_equal(chosen, draw_shots(labels, 3, 3, seed=0))
    assert any(not np.array_equal(chosen, draw_shots(labels, 3, 3, seed=s)) for s in range(1, 5))


def test_bad_options_are_one_line_before_any_model_is_read(digits_data_dir, capsys, tmp_path):
    common = [f"--checkpoint={tmp_path / 'no_such.npz'}", "--dataset=sklearn_digits", f"--data-dir={digits_data_dir}"]
    for extra, message in ((["--shots", "0", "5"], "--shots 0 5: expected one or more positive counts"),
                           (["--seeds=0"], "--seeds 0: expected a positive number of draws"),
                           (["--l2-reg=0"], "--l2-reg 0.0: expected a positive regularisation strength")):
        assert main([*common, *extra]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.xdist_group("readme_run")  # the worker that runs the README's main command
def test_the_readme_runs_representation_learns_the_digits_from_a_few_shots(readme_run, capsys, tmp_path):
    """On the run's own splits: each seed's and shot count's accuracy is scikit-learn's ridge regression on the
    shots big_vision's draw picks from the saved representations; five digits of each class already give most of
    the accuracy a trained head has."""
    workdir, _ = readme_run
    out = tmp_path / "fewshot.json"
    assert main([f"--checkpoint={workdir}", "--shots", "1", "5", "--seeds=2", f"--out={out}",
                 f"--features={tmp_path / 'features.npz'}"]) == 0
    printed = capsys.readouterr().out
    assert "few-shot least squares on sklearn_digits (test: 360 images; shots from train: 1,257)" in printed
    report = json.loads(out.read_text())
    with np.load(tmp_path / "features.npz", allow_pickle=False) as saved:
        train, train_labels, test, test_labels = (saved[k] for k in ("train", "train_labels", "test", "test_labels"))
    for result in report["results"]:
        expected = []
        for seed in range(2):
            chosen = draw_shots(train_labels, 10, result["shots"], seed)
            outputs = ridge_outputs(train[chosen].astype(np.float64), train_labels[chosen], test, 10, 1024.0)
            expected.append(np.mean(np.argmax(outputs, 1) == test_labels))
        assert result["seeds"] == pytest.approx(expected, abs=1e-12)
        assert result["top1"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert report["results"][1]["top1"] >= 0.9
