"""Few-shot linear evaluation of a checkpoint's representation: big_vision's `fewshot_lsr`, the figure ViT,
BiT and SigLIP papers track ("ImageNet 10-shot").

    python -m vit_jax.fewshot --checkpoint=workdirs/digits
    python -m vit_jax.fewshot --checkpoint=hf-hub:timm/vit_base_patch16_224.augreg_in21k --dataset=cifar100 \
        [--shots 1 5 10 25] [--seeds 3]

The representation the head reads (as `vit_jax.knn`'s) of every image of the training and the test split; for
each seed and shot count, `shots` training images of each class (a seeded permutation of each class's images, as
big_vision draws them; fewer where a class has fewer), features standardised by those images' mean and standard
deviation, a constant feature of 100 for the bias (almost unregularised), targets one-hot in {-1, 1}, and the
L2-regularised least-squares solution (`l2_reg` 2^10) scores the test split by its largest output. In float64
on the host, through the eigendecomposition big_vision uses, so the many fits cost one decomposition each.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import numpy as np

BIG_VISION_SHOTS = (1, 5, 10, 25)
BIG_VISION_L2_REG = 2.0**10
BIG_VISION_SEEDS = 3
BIAS_CONSTANT = 100.0  # the bias feature: large, so its weight is almost unregularised


@dataclasses.dataclass(frozen=True)
class FewshotResult:
    shots: int
    top1: float  # the mean over the seeds
    seeds: tuple[float, ...]


def draw_shots(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """Indices of `shots` examples of each class (all of a class's if it has fewer), as big_vision draws them:
    each class's examples in a permutation from `np.random.default_rng(seed)`, classes in order."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    return np.concatenate([indices[:shots] for indices in per_class])


def least_squares_outputs(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, num_classes: int,
                          l2_reg: float = BIG_VISION_L2_REG) -> np.ndarray:
    """`(N_test, classes)` outputs of the L2-regularised least-squares fit of one-hot {-1, 1} targets to the
    standardised features `x` plus a constant bias feature (big_vision's `_precompute_cache` and
    `_eig_fewshot_acc_fn`); the test split scores by their largest."""
    x, x_test = np.asarray(x, np.float64), np.asarray(x_test, np.float64)
    mean, std = x.mean(axis=0, keepdims=True), x.std(axis=0, keepdims=True) + 1e-5
    bias = lambda a: np.pad((a - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)  # noqa: E731
    x, x_test = bias(x), bias(x_test)
    targets = 2.0 * np.eye(num_classes)[y] - 1.0
    if len(x) >= x.shape[1]:  # (x^T x + l2 I)^-1 x^T y
        eigs, q = np.linalg.eigh(x.T @ x)
        lhs, rhs = q, q.T @ (x.T @ targets)
    else:  # x^T (x x^T + l2 I)^-1 y: the smaller system
        eigs, q = np.linalg.eigh(x @ x.T)
        lhs, rhs = x.T @ q, q.T @ targets
    return x_test @ ((lhs / (eigs + l2_reg)[None, :]) @ rhs)


def fewshot_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                     num_classes: int, shots: Sequence[int] = BIG_VISION_SHOTS, seeds: int = BIG_VISION_SEEDS,
                     l2_reg: float = BIG_VISION_L2_REG) -> list[FewshotResult]:
    """Top-1 of the few-shot least-squares fit for each shot count, per seed and their mean."""
    check_options(shots, seeds, l2_reg)
    results = []
    for k in shots:
        accuracies = []
        for seed in range(seeds):
            chosen = draw_shots(train_labels, num_classes, k, seed)
            outputs = least_squares_outputs(train[chosen], train_labels[chosen], test, num_classes, l2_reg)
            accuracies.append(float(np.mean(np.argmax(outputs, axis=1) == test_labels)))
        results.append(FewshotResult(int(k), float(np.mean(accuracies)), tuple(accuracies)))
    return results


def check_options(shots: Sequence[int], seeds: int, l2_reg: float, flag: str = "--") -> None:
    """A ValueError naming the first bad option (`flag`: how its name is written, `--` on the command line)."""
    if not shots or any(not isinstance(k, int) or k < 1 for k in shots):
        raise ValueError(f"{flag}shots {' '.join(map(str, shots))}: expected one or more positive counts of training "
                         f"images per class (big_vision's: {' '.join(map(str, BIG_VISION_SHOTS))})")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"{flag}seeds {seeds}: expected a positive number of draws")
    if not isinstance(l2_reg, int | float) or not l2_reg > 0:
        raise ValueError(f"{flag}{'l2-reg' if flag else 'l2_reg'} {l2_reg}: expected a positive regularisation "
                         f"strength (big_vision's: 1024)")


def main(argv: Sequence[str] | None = None) -> int:
    from vit_jax import frozen_features  # the command's; the evaluation above is shared with training's

    parser = frozen_features.argument_parser("python -m vit_jax.fewshot", __doc__, {
        "train": "the split the shots are drawn from (default: train, or the run's)",
        "test": "the split scored (default: test, or the run's)"})
    parser.add_argument("--shots", type=int, nargs="+", default=list(BIG_VISION_SHOTS),
                        help="training images per class (default: big_vision's)")
    parser.add_argument("--seeds", type=int, default=BIG_VISION_SEEDS, help="draws of the shots, averaged")
    parser.add_argument("--l2-reg", type=float, default=BIG_VISION_L2_REG)
    args = parser.parse_args(argv)
    prepared = frozen_features.prepare(args, {"train": "train", "test": "test"},
                                       lambda data: check_options(args.shots, args.seeds, args.l2_reg))
    if prepared is None:
        return 2
    data, trained = prepared
    features = frozen_features.split_representations(trained, data, args.batch_size, args.dtype, args.data_threads)
    (train, train_labels), (test, test_labels) = features["train"], features["test"]
    results = fewshot_accuracy(train, train_labels, test, test_labels, data.num_classes, args.shots, args.seeds,
                               args.l2_reg)
    lines = [f"few-shot least squares on {data.dataset} ({data.splits['test']}: {len(test):,} {data.examples}; "
             f"shots from {data.splits['train']}: {len(train):,}), {trained.source}'s {train.shape[1]}-wide "
             f"representation, l2 {args.l2_reg:g}, {args.seeds} seed{'s' * (args.seeds > 1)}",
             f"{'shots':>5} {'top-1':>8}  seeds"]
    lines += [f"{r.shots:>5} {r.top1:>8.2%}  " + " ".join(f"{a:.2%}" for a in r.seeds) for r in results]
    frozen_features.report(args, data, features, lines, {
        "width": int(train.shape[1]), "l2_reg": args.l2_reg, "seeds": args.seeds,
        "results": [dataclasses.asdict(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
