"""Top-k classes of a trained model for image files.

    python -m vit_jax.predict --workdir=workdirs/digits IMAGE [IMAGE ...]
    python -m vit_jax.predict --npz=ViT-B_16.npz [--variant=B/16] [--dataset=NAME] IMAGE [IMAGE ...]
    python -m vit_jax.predict --checkpoint=hf-hub:timm/vit_small_patch14_dinov2.lvd142m IMAGE [IMAGE ...]

Each image is decoded in the model's channel mode and preprocessed exactly as evaluation does (resize to the
training resolution with the run's method, value range), so a file gets the prediction its dataset example
would; a Hub checkpoint is fed what its `pretrained_cfg` (timm) or `preprocessor_config.json` (transformers)
says (mean, std, size, crop). Class names come from the dataset's metadata when known (`--dataset` for an `.npz`),
a transformers checkpoint's `id2label`, or ImageNet's for a 1,000-class head. A missing or
unreadable file is reported on its own line and the others are still predicted; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vit_jax.checkpoint.trained_model import TrainedModel, load_trained_model
from vit_jax.data.image_files import UnreadableImageError, read_image
from vit_jax.image_size_flag import add_image_size_option, image_size_argument, split_image_size


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which trained model to load (shared with `vit_jax.visualize`)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a vit_jax run directory (its latest checkpoint, or --step)")
    source.add_argument("--npz", help="an .npz file (vision_transformer, big_vision or vit_jax export; FILE.npz:KEY: one model of several, "
                                         "e.g. a two-tower checkpoint's img)")
    source.add_argument("--checkpoint", help="any of those, or a Hub checkpoint in timm's or transformers' "
                                             "layout: hf-hub:OWNER/NAME, a Hub-layout directory or a .safetensors "
                                             "file")
    parser.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: the latest)")
    parser.add_argument("--variant", default=None, help="npz: e.g. B/16, checked against the file's shapes")
    add_image_size_option(parser, "the size images are fed at (default: the checkpoint's own; an .npz file's: "
                                  "its position table's grid times the patch size)")
    parser.add_argument("--value-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LO", "HI"),
                        help="npz: pixel values 0..255 map to [LO, HI] (default -1 1, as vision_transformer)")
    parser.add_argument("--dataset", default=None, help="npz: a TFDS dataset whose label names to print")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir for --dataset")


def load_from_arguments(args: argparse.Namespace) -> TrainedModel:
    """The model the options name; a ValueError for a video model (these commands read image files)."""
    image_size = image_size_argument(args.image_size)
    trained = load_trained_model(args.checkpoint, workdir=args.workdir, npz=args.npz, step=args.step,
                                 variant=args.variant, image_size=image_size, value_range=tuple(args.value_range),
                                 dataset=args.dataset, data_dir=args.data_dir)
    if trained.model.tubelet_size is not None:
        raise ValueError(f"{trained.source} is a video model (tubelet_size={trained.model.tubelet_size!r}); "
                         f"this command reads image files")
    return trained


def preprocessed(trained: TrainedModel, path: str | Path) -> np.ndarray:
    """`(h, w, C)` float32: the file as evaluation would feed it to the model."""
    image = read_image(path, trained.channels)
    return trained.preprocess.eval({"image": image, "label": 0})["image"]


def class_probabilities(trained: TrainedModel, images: np.ndarray) -> np.ndarray:
    logits = jax.jit(lambda p, x: trained.model.apply({"params": p}, x, train=False))(trained.params, images)
    return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))


def top_k(probabilities: np.ndarray, names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(names[i], float(probabilities[i])) for i in order]


def predict_files(trained: TrainedModel, paths: Sequence[str], k: int, batch_size: int = 64
                  ) -> list[dict[str, Any]]:
    """One record per path, in order: `{'path', 'top_k': [(class, probability), ...]}` or `{'path', 'error'}`."""
    records: list[dict[str, Any]] = []
    readable: list[tuple[int, np.ndarray]] = []
    for path in paths:
        try:
            readable.append((len(records), preprocessed(trained, path)))
            records.append({"path": path})
        except UnreadableImageError as error:
            records.append({"path": path, "error": str(error)})
    by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}  # NaFlex views keep each image's aspect
    for index, image in readable:
        by_shape.setdefault(image.shape, []).append((index, image))
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            probabilities = class_probabilities(trained, np.stack([image for _, image in chunk]))
            for (index, _), row in zip(chunk, probabilities):
                records[index]["top_k"] = top_k(row, trained.class_names, k)
    return records


def format_record(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"{record['path']}: error: {record['error']}"
    lines = [record["path"]]
    lines += [f"  {probability:7.2%}  {name}" for name, probability in record["top_k"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.predict", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="PNG/JPEG (any format PIL reads)")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="one JSON record per image instead of text")
    args = parser.parse_args(argv)
    try:  # `--image-size 384 cat.jpg`: the option takes one or two values, and the rest are images
        size, swallowed = split_image_size(args.image_size)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    args.image_size, args.images = size, [*args.images, *swallowed]
    if not args.images:
        parser.error("the following arguments are required: IMAGE")
    if args.top_k <= 0 or args.batch_size <= 0:
        parser.exit(2, f"error: --top-k {args.top_k} / --batch-size {args.batch_size}: expected positive integers\n")
    try:
        trained = load_from_arguments(args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    if not trained.class_names:
        parser.exit(2, f"error: {trained.source} has no classification head to predict with\n")
    records = predict_files(trained, args.images, min(args.top_k, len(trained.class_names)), args.batch_size)
    for record in records:
        print(json.dumps(record) if args.json else format_record(record))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
