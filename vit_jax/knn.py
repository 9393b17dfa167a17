"""k-nearest-neighbour evaluation of a checkpoint's representation: how self-supervised backbones are compared.

    python -m vit_jax.knn --checkpoint=workdirs/digits
    python -m vit_jax.knn --checkpoint=hf-hub:timm/vit_small_patch14_dinov2.lvd142m --dataset=NAME [--k 10 20]

Every image of the training split and of the test split goes through the checkpoint's evaluation view to the
representation its head reads (the pooled token after `fc_norm` / `pre_logits`: a DINOv2 or CLIP checkpoint's
embedding), and each test image is classified by the weighted vote of its `k` nearest training images, as DINO's
and DINOv2's `eval_knn`: cosine similarity of L2-normalised representations, each neighbour's vote
`exp(similarity / temperature)` (0.07), k = 10, 20, 100, 200. No parameter is trained, so the figure measures the
representation alone. A workdir evaluates on its own run's dataset and splits unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vit_jax import frozen_features
from vit_jax.sharding import DATA_AXIS, host_tree_to_global, make_mesh, replicated

DINO_KS = (10, 20, 100, 200)
DINO_TEMPERATURE = 0.07
TOP = 5  # the second figure reported: whether the label is among the 5 classes with the most votes


@dataclasses.dataclass(frozen=True)
class KnnResult:
    k: int
    top1: float
    top5: float


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as `torch.nn.functional.normalize`: a zero row stays zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def _correct(test: jax.Array, test_labels: jax.Array, bank: jax.Array, bank_labels: jax.Array, temperature: float,
             ks: tuple[int, ...], num_classes: int) -> jax.Array:
    """`(len(ks), 2)` counts of test rows whose label is first / among the first `TOP` by weighted votes. Bank rows
    labelled -1 (padding) are never neighbours."""
    # full float32 products: TPUs (bfloat16 passes) and GPUs (TF32) would otherwise round the similarities
    similarity = jnp.matmul(test, bank.T, precision=jax.lax.Precision.HIGHEST)
    similarity, index = jax.lax.top_k(jnp.where(bank_labels >= 0, similarity, -jnp.inf), max(ks))
    # each row's votes scaled by exp(-best similarity / T): the same ranking, and no overflow at small temperatures
    weights = jnp.exp((similarity - similarity[:, :1]) / temperature)
    neighbours = bank_labels[index]
    rows = jnp.arange(test.shape[0])[:, None]
    counts = []
    for k in ks:
        votes = jnp.zeros((test.shape[0], num_classes), jnp.float32).at[rows, neighbours[:, :k]].add(weights[:, :k])
        rank = frozen_features.label_rank(votes, test_labels)
        # a class no neighbour voted for is never predicted (DINO's order among those is arbitrary)
        own = jnp.take_along_axis(votes, jnp.maximum(test_labels, 0)[:, None], axis=1)[:, 0]
        counted = (own > 0) & (test_labels >= 0)
        counts.append(jnp.stack([jnp.sum(counted & (rank == 0)), jnp.sum(counted & (rank < TOP))]))
    return jnp.stack(counts)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, ks: Sequence[int] = DINO_KS, temperature: float = DINO_TEMPERATURE,
                 num_classes: int | None = None, similarities_per_chunk: int = 2**26) -> list[KnnResult]:
    """Top-1 and top-5 accuracy of DINO's weighted k-NN vote, for each `k`. The training representations are
    split over every device (of every process: each holds all of them on the host), so a bank too large for one
    accelerator fits the many; test rows go in chunks whose similarity matrix has at most `similarities_per_chunk`
    entries."""
    ks = tuple(int(k) for k in ks)
    check_options(ks, temperature, len(train_features))
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1 if num_classes is None else num_classes
    mesh = make_mesh([(DATA_AXIS, -1)])
    everywhere, split_rows = replicated(mesh), NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    size = -(-len(train_features) // mesh.size) * mesh.size  # padded to a multiple of the devices
    bank = np.zeros((size, train_features.shape[1]), np.float32)
    bank[:len(train_features)] = normalised(train_features)
    bank_labels = np.full(size, -1, np.int32)
    bank_labels[:len(train_labels)] = train_labels
    bank, bank_labels = host_tree_to_global((bank, bank_labels), (split_rows, split_rows))
    correct = jax.jit(functools.partial(_correct, ks=ks, num_classes=num_classes), out_shardings=everywhere)
    test = normalised(test_features)
    chunk = max(1, min(len(test), similarities_per_chunk // len(bank)))
    totals = np.zeros((len(ks), 2), np.int64)
    for start in range(0, len(test), chunk):
        rows, labels = test[start:start + chunk], np.asarray(test_labels[start:start + chunk], np.int32)
        padding = chunk - len(rows)  # one shape for every chunk: one compilation
        rows = np.concatenate([rows, np.zeros((padding, rows.shape[1]), np.float32)])
        labels = np.concatenate([labels, np.full(padding, -1, np.int32)])
        chunk_rows, chunk_labels = host_tree_to_global((rows, labels), (everywhere, everywhere))
        totals += np.asarray(correct(chunk_rows, chunk_labels, bank, bank_labels, np.float32(temperature)))
    return [KnnResult(k, float(top1 / len(test)), float(top5 / len(test))) for k, (top1, top5) in zip(ks, totals)]


def check_options(ks: Sequence[int], temperature: float, num_train: int) -> None:
    if not ks or any(k < 1 or k > num_train for k in ks):
        raise ValueError(f"--k {' '.join(map(str, ks))}: expected one or more neighbour counts from 1 to the "
                         f"training split's {num_train} images")
    if not temperature > 0:
        raise ValueError(f"--temperature {temperature}: expected a positive number (DINO's: {DINO_TEMPERATURE})")


def main(argv: Sequence[str] | None = None) -> int:

    parser = frozen_features.argument_parser("python -m vit_jax.knn", __doc__, {
        "train": "the neighbours' split (default: train, or the run's)",
        "test": "the split classified (default: test, or the run's)"})
    parser.add_argument("--k", type=int, nargs="+", default=list(DINO_KS), help="neighbour counts (default: DINO's)")
    parser.add_argument("--temperature", type=float, default=DINO_TEMPERATURE)
    args = parser.parse_args(argv)
    prepared = frozen_features.prepare(args, {"train": "train", "test": "test"},
                                       lambda data: check_options(args.k, args.temperature, data.sizes["train"]))
    if prepared is None:
        return 2
    data, trained = prepared
    features = frozen_features.split_representations(trained, data, args.batch_size, args.dtype, args.data_threads)
    (train, train_labels), (test, test_labels) = features["train"], features["test"]
    results = knn_accuracy(train, train_labels, test, test_labels, args.k, args.temperature, data.num_classes)
    lines = [f"k-NN on {data.dataset} ({data.splits['test']}: {len(test):,} {data.examples}; neighbours from "
             f"{data.splits['train']}: {len(train):,}), {trained.source}'s {train.shape[1]}-wide representation, "
             f"temperature {args.temperature}", f"{'k':>5} {'top-1':>8} {'top-5':>8}"]
    lines += [f"{result.k:>5} {result.top1:>8.2%} {result.top5:>8.2%}" for result in results]
    frozen_features.report(args, data, features, lines, {"width": int(train.shape[1]), "temperature": args.temperature,
                                                         "results": [dataclasses.asdict(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
