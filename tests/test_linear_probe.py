"""The linear probe: L-BFGS fits against scikit-learn's LogisticRegression, and the command on the README run's
workdir, its C chosen on the validation split."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vit_jax.linear_probe import fit_logistic_regression, main, top_k_accuracy


def probabilities(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fits_are_sklearns_logistic_regression(rng):
    """Five classes, overlapping: from strong to weak regularisation the class probabilities are scikit-learn's
    (converged far tighter, in float64) to float32's reach; the weights too where the problem is well conditioned; a
    fit warm-started at another C lands on the same solution as one from zeros."""
    centres = 0.5 * rng.standard_normal((5, 12))
    labels = rng.integers(0, 5, 300)
    features = 3 * (centres[labels] + rng.standard_normal((300, 12)))
    previous = None
    for c in (1e-4, 1e-2, 1.0, 100.0):
        ours = fit_logistic_regression(features, labels, c, 5, start=previous)
        theirs = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(features, labels)
        assert ours.gradient <= 1e-5 and ours.iterations < 1000
        np.testing.assert_allclose(probabilities(ours.logits(features)), theirs.predict_proba(features), atol=2e-3)
        np.testing.assert_array_equal(np.argmax(ours.logits(features), 1), theirs.predict(features))
        if c <= 1e-2:
            np.testing.assert_allclose(ours.kernel, theirs.coef_.T, atol=2e-4 * np.abs(theirs.coef_).max())
        cold = fit_logistic_regression(features, labels, c, 5)
        np.testing.assert_allclose(probabilities(cold.logits(features)), probabilities(ours.logits(features)),
                                   atol=2e-3)
        previous = ours
    assert 0.5 < top_k_accuracy(ours.logits(features), labels, 1) < top_k_accuracy(ours.logits(features), labels, 2)
    with pytest.raises(ValueError, match="C=0: expected a positive"):
        fit_logistic_regression(features, labels, 0, 5)


def test_top_k_accuracy_counts_ties_to_the_lower_class():
    logits = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [0.0, 1.0, 2.0]])
    assert top_k_accuracy(logits, np.array([1, 1, 0]), 1) == pytest.approx(1 / 3)  # row 0: class 1 before 2
    assert top_k_accuracy(logits, np.array([2, 1, 0]), 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(logits, np.array([0, 0, 0]), 3) == 1.0


@pytest.mark.xdist_group("readme_run")  # the worker that runs the README's main command
def test_the_readme_runs_representation_is_probed_with_c_chosen_on_validation(readme_run, capsys, tmp_path):
    """`python -m vit_jax.linear_probe --checkpoint=WORKDIR`: fitted on the run's train split, C chosen on its
    validation split (each accuracy scikit-learn's on the same features, to an image where logits nearly tie), the
    test accuracy of that C reported; the trained representation is linearly separable enough for 97%."""
    workdir, _ = readme_run
    out = tmp_path / "probe.json"
    features = tmp_path / "features.npz"
    assert main([f"--checkpoint={workdir}", "--C", "1e-6", "1e-3", "1", "1000", f"--out={out}",
                 f"--features={features}"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert (report["train_split"], report["eval_split"], report["test_split"]) == ("train", "validation", "test")
    assert (report["num_train"], report["num_eval"], report["num_test"]) == (1257, 180, 360)
    with np.load(features, allow_pickle=False) as saved:
        # float64 for scikit-learn: given float32 it fits in float32 and, for C = 1e-6, stops elsewhere along a
        # direction the objective barely changes in (the features nearly satisfy an affine constraint, as a
        # LayerNorm's outputs do), at 97% validation accuracy where its float64 fit and vit_jax's give 48%
        split = {role: (saved[role].astype(np.float64), saved[f"{role}_labels"]) for role in ("train", "eval", "test")}
    accuracies = {}
    for entry in report["validation"]:
        theirs = LogisticRegression(C=entry["c"], tol=1e-8, max_iter=100_000).fit(*split["train"])
        accuracies[entry["c"]] = theirs.score(*split["eval"])
        assert entry["top1"] == pytest.approx(accuracies[entry["c"]], abs=1 / 180 + 1e-9), entry
    assert [entry["c"] for entry in report["validation"]] == [1e-6, 1e-3, 1.0, 1000.0]
    best = max(report["validation"], key=lambda entry: (entry["top1"], -entry["c"]))
    assert report["c"] == best["c"] and report["validation"][0]["top1"] < best["top1"]
    chosen = LogisticRegression(C=report["c"], tol=1e-8, max_iter=100_000).fit(*split["train"])
    assert report["top1"] == pytest.approx(chosen.score(*split["test"]), abs=1 / 360 + 1e-9)
    assert report["top1"] >= 0.97 and report["top5"] >= report["top1"]
    assert f"test top-1 {report['top1']:.2%}, top-5 {report['top5']:.2%}" in printed
