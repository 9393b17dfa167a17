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

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoint.adapt import HEADS
from vit_jax.checkpoint.trained_model import TrainedModel, checkpoint_kind, image_size_argument, load_trained_model
from vit_jax.data.pipeline import eval_batches
from vit_jax.sharding import DATA_AXIS, batch_sharding, make_mesh, replicated, to_global

DINO_KS = (10, 20, 100, 200)
DINO_TEMPERATURE = 0.07
TOP = 5  # the second figure reported: whether the label is among the 5 classes with the most votes


@dataclasses.dataclass(frozen=True)
class KnnResult:
    k: int
    top1: float
    top5: float


def representations(trained: TrainedModel, source: Sequence[dict[str, Any]], batch_size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`(N, D)` float32 representations (what the head reads) and `(N,)` labels of every example of `source`, in
    order, each batch split over this process's devices. A grayscale dataset is fed to an RGB model as timm feeds
    it (the gray value in every channel); a NaFlex checkpoint is evaluated at its fixed image size."""
    if jax.process_count() > 1:
        raise ValueError(f"k-NN evaluation runs in one process (this is one of {jax.process_count()}); it uses all "
                         f"of that process's devices")
    mesh = make_mesh([(DATA_AXIS, -1)])
    devices = mesh.shape[DATA_AXIS]
    batch_size = -(-batch_size // devices) * devices
    data, everywhere = batch_sharding(mesh), replicated(mesh)
    model = trained.model.clone(num_classes=0)  # returns the representation
    params = jax.device_put({name: p for name, p in trained.params.items() if name not in HEADS}, everywhere)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False).astype(jnp.float32),
                      in_shardings=(everywhere, data), out_shardings=everywhere)
    preprocess = dataclasses.replace(trained.preprocess, channels=trained.channels, max_patches=None)
    features, labels = [], []
    for batch in eval_batches(source, preprocess, batch_size=batch_size):
        real = batch["mask"] > 0
        features.append(np.asarray(forward(params, to_global({"image": batch["image"]}, data)["image"]))[real])
        labels.append(batch["label"][real])
    return np.concatenate(features), np.concatenate(labels).astype(np.int32)


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as `torch.nn.functional.normalize`: a zero row stays zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("ks", "num_classes"))
def _correct(test: jax.Array, test_labels: jax.Array, bank: jax.Array, bank_labels: jax.Array, temperature: float,
             ks: tuple[int, ...], num_classes: int) -> jax.Array:
    """`(len(ks), 2)` counts of test rows whose label is first / among the first `TOP` by weighted votes."""
    similarity, index = jax.lax.top_k(test @ bank.T, max(ks))
    weights, neighbours = jnp.exp(similarity / temperature), bank_labels[index]
    rows = jnp.arange(test.shape[0])[:, None]
    counts = []
    for k in ks:
        votes = jnp.zeros((test.shape[0], num_classes), jnp.float32).at[rows, neighbours[:, :k]].add(weights[:, :k])
        own = jnp.take_along_axis(votes, jnp.maximum(test_labels, 0)[:, None], axis=1)
        # the label's rank: classes with more votes, and those with as many and a lower index, come first; a class
        # no neighbour voted for is never predicted (DINO's order among those is arbitrary)
        rank = jnp.sum((votes > own) | ((votes == own) & (jnp.arange(num_classes) < test_labels[:, None])), axis=1)
        counted = (own[:, 0] > 0) & (test_labels >= 0)
        counts.append(jnp.stack([jnp.sum(counted & (rank == 0)), jnp.sum(counted & (rank < TOP))]))
    return jnp.stack(counts)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, ks: Sequence[int] = DINO_KS, temperature: float = DINO_TEMPERATURE,
                 num_classes: int | None = None, similarities_per_chunk: int = 2**26) -> list[KnnResult]:
    """Top-1 and top-5 accuracy of DINO's weighted k-NN vote, for each `k`; test rows go in chunks whose
    similarity matrix has at most `similarities_per_chunk` entries."""
    ks = tuple(int(k) for k in ks)
    check_ks(ks, len(train_features))
    if not temperature > 0:
        raise ValueError(f"temperature {temperature}: expected a positive number (DINO: {DINO_TEMPERATURE})")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1 if num_classes is None else num_classes
    bank, bank_labels = jnp.asarray(normalised(train_features)), jnp.asarray(train_labels, jnp.int32)
    test = normalised(test_features)
    chunk = max(1, min(len(test), similarities_per_chunk // len(bank)))
    totals = np.zeros((len(ks), 2), np.int64)
    for start in range(0, len(test), chunk):
        rows, labels = test[start:start + chunk], np.asarray(test_labels[start:start + chunk], np.int32)
        padding = chunk - len(rows)  # one shape for every chunk: one compilation
        rows = np.concatenate([rows, np.zeros((padding, rows.shape[1]), np.float32)])
        labels = np.concatenate([labels, np.full(padding, -1, np.int32)])
        totals += np.asarray(_correct(rows, labels, bank, bank_labels, temperature, ks, num_classes))
    return [KnnResult(k, float(top1 / len(test)), float(top5 / len(test))) for k, (top1, top5) in zip(ks, totals)]


def check_ks(ks: Sequence[int], num_train: int) -> None:
    if not ks or any(k < 1 or k > num_train for k in ks):
        raise ValueError(f"--k {' '.join(map(str, ks))}: expected one or more neighbour counts from 1 to the "
                         f"training split's {num_train} images")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.knn", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a vit_jax workdir, an .npz file or a Hub checkpoint "
                                                            "(hf-hub:OWNER/NAME, a Hub-layout directory, .safetensors)")
    parser.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: the latest)")
    parser.add_argument("--image-size", type=int, nargs="+", default=None, metavar="H [W]",
                        help="npz: the image size (default: the position table's grid times the patch size)")
    parser.add_argument("--dataset", default=None, help="a prepared TFDS dataset, a built-in one or "
                                                        "folder:/path (default for a workdir: its run's)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default for a workdir: its run's)")
    parser.add_argument("--train-split", default=None, help="the neighbours' split (default: train, or the run's)")
    parser.add_argument("--test-split", default=None, help="the split classified (default: test, or the run's)")
    parser.add_argument("--k", type=int, nargs="+", default=list(DINO_KS), help="neighbour counts (default: DINO's)")
    parser.add_argument("--temperature", type=float, default=DINO_TEMPERATURE)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    parser.add_argument("--features", default=None, help="an .npz file for the representations and labels of both "
                                                         "splits (train, train_labels, test, test_labels)")
    return parser.parse_args(argv)


def _dataset_arguments(args: argparse.Namespace) -> dict[str, str | None]:
    """The dataset, data dir and splits: as given, else a workdir's run's, else train / test."""
    run: dict[str, Any] = {}
    if checkpoint_kind(args.checkpoint) == "workdir":
        from vit_jax.config import saved_config

        run = saved_config(args.checkpoint).to_dict()
    chosen = {"dataset": args.dataset or run.get("dataset"), "data_dir": args.data_dir or run.get("data_dir"),
              "train_split": args.train_split or run.get("train_split", "train"),
              "test_split": args.test_split or run.get("test_split", "test")}
    if chosen["dataset"] is None:
        raise ValueError(f"{args.checkpoint}: not a vit_jax workdir, so --dataset must say what to evaluate on")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    from vit_jax.console import quiet_logging
    from vit_jax.data.sources import dataset_builder, dataset_spec, open_split, split_size
    from vit_jax.entry import check_output

    args = _arguments(argv)
    quiet_logging()
    try:
        if args.batch_size <= 0 or not args.temperature > 0:
            raise ValueError(f"--batch-size {args.batch_size} / --temperature {args.temperature}: expected positive "
                             f"numbers")
        out, features = (None if path is None else check_output(path, flag)
                         for path, flag in ((args.out, "--out"), (args.features, "--features")))
        data = _dataset_arguments(args)
        builder = dataset_builder(data["dataset"], data["data_dir"])
        num_train, num_test = (split_size(builder, data[split]) for split in ("train_split", "test_split"))
        check_ks(args.k, num_train)
        trained = load_trained_model(args.checkpoint, step=args.step, image_size=image_size_argument(args.image_size))
        splits = [open_split(builder, data[split]) for split in ("train_split", "test_split")]
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    (train, train_labels), (test, test_labels) = (representations(trained, split, args.batch_size)
                                                  for split in splits)
    results = knn_accuracy(train, train_labels, test, test_labels, args.k, args.temperature,
                           dataset_spec(builder).num_classes)
    print(f"k-NN on {data['dataset']} ({data['test_split']}: {num_test:,} images; neighbours from "
          f"{data['train_split']}: {num_train:,}), {trained.source}'s {train.shape[1]}-wide representation, "
          f"temperature {args.temperature}")
    print(f"{'k':>5} {'top-1':>8} {'top-5':>8}")
    for result in results:
        print(f"{result.k:>5} {result.top1:>8.2%} {result.top5:>8.2%}")
    if features is not None:
        features.parent.mkdir(parents=True, exist_ok=True)
        np.savez(features, train=train, train_labels=train_labels, test=test, test_labels=test_labels)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"checkpoint": str(args.checkpoint), **data, "num_train": num_train,
                                   "num_test": num_test, "width": int(train.shape[1]),
                                   "temperature": args.temperature,
                                   "results": [dataclasses.asdict(r) for r in results]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
