"""Open a split of a TFDS dataset for random access, without TensorFlow.

Any TFDS dataset prepared in ArrayRecord format works by name (`cifar10`, `imagenet2012`, ...). vit_jax builds
some itself, on first use, with no network: `sklearn_digits` (the default), `cluttered_digits` (64x64, detail at
several scales: `vit_jax.data.cluttered_digits`), `moving_digits` (videos; see `vit_jax.data.moving_digits`) and
`folder:/path/to/images` (a user's image folder; see
`vit_jax.data.image_folder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from vit_jax.data.cluttered_digits import ClutteredDigits
from vit_jax.data.digits import SklearnDigits
from vit_jax.data.encoded_image import KeepEncoded, keeps_encoded
from vit_jax.data.image_folder import build_image_folder
from vit_jax.data.moving_digits import MovingDigits

BUILT_IN: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {"sklearn_digits": SklearnDigits,
                                                              "cluttered_digits": ClutteredDigits,
                                                              "moving_digits": MovingDigits}
FOLDER_PREFIX = "folder:"
# the feature holding an example's class: `label`, or TFDS's `imagenet2012_real`'s `original_label` (ImageNet's own
# label beside `real_label`, ReaL's set of plausible ones), read as `label`
LABEL_FEATURES = ("label", "original_label")


class DatasetError(ValueError):
    """A dataset or split that cannot be read: unknown, not prepared, or in a format we cannot read."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the model and the pipeline need to know about a dataset, read from its metadata."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    # (H, W, C), or (T, H, W, C) for videos; H and W are None for variable-size images
    image_shape: tuple[int | None, ...]


def default_data_dir(data_dir: str | None = None) -> str:
    """`data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (TFDS's own rule)."""
    return str(Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser())


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str) -> Iterator[None]:
    """Only one process builds a dataset at a time (several local processes may start together)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / f".{name.replace('/', '_')}.build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _quietly_prepare(builder: tfds.core.DatasetBuilder) -> None:
    tfds.display_progress_bar(False)
    try:
        builder.download_and_prepare()
    finally:
        tfds.display_progress_bar(True)


def dataset_builder(name: str, data_dir: str | None = None, *, strict: bool = False) -> tfds.core.DatasetBuilder:
    """A prepared ArrayRecord builder for `name`, building vit_jax's own datasets when needed.

    `strict`: building from an image folder stops at the first unreadable image instead of skipping it.
    """
    data_dir = default_data_dir(data_dir)
    if name in BUILT_IN:
        builder = BUILT_IN[name](data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            with _build_lock(data_dir, name):
                _quietly_prepare(builder)
        return builder
    if name.startswith(FOLDER_PREFIX):
        folder = Path(name[len(FOLDER_PREFIX):]).expanduser().resolve()
        derived = "".join(c if c.isalnum() else "_" for c in folder.name.lower()).strip("_") or "images"
        with _build_lock(data_dir, derived):
            builder = build_image_folder(folder, derived if derived[0].isalpha() else f"images_{derived}",
                                         data_dir=data_dir, strict=strict)
        built_from = builder.info.description.removeprefix("Images from ")
        if Path(built_from) != folder:
            raise DatasetError(
                f"dataset {builder.name!r} in {data_dir} was built from {built_from}, not {folder}; build this folder "
                f"under another name: python -m vit_jax.data.image_folder {folder} --name NAME"
            )
        return builder
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(
            f"unknown dataset {name!r}: not a TFDS dataset nor one prepared under {data_dir}; vit_jax builds "
            f"{sorted(BUILT_IN)} and 'folder:/path/to/images' itself"
        ) from None
    if not builder.is_prepared():
        raise DatasetError(
            f"dataset {name!r} is not prepared under {data_dir}; prepare it once in ArrayRecord format (this step "
            f"needs TensorFlow and the network): tfds build {name} --file_format=array_record --data_dir={data_dir}"
        )
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        fmt = builder.info.file_format.value if builder.info.file_format else "unknown"
        raise DatasetError(
            f"dataset {name!r} under {data_dir} is in {fmt} format; vit_jax reads ArrayRecord without TensorFlow: "
            f"tfds build {name} --file_format=array_record --data_dir={data_dir}"
        )
    return builder


def split_size(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Number of examples in `split` (slices such as `train[:90%]` and sums such as `train+validation` work)."""
    try:
        return builder.info.splits[split].num_examples
    except (ValueError, KeyError, AssertionError) as error:
        raise DatasetError(
            f"unknown split {split!r} of dataset {builder.name!r}; splits: {sorted(builder.info.splits)} "
            f"(slices like 'train[:90%]' work too)"
        ) from error


def label_feature(builder: tfds.core.DatasetBuilder) -> str:
    """The feature read as each example's `label` (`LABEL_FEATURES`)."""
    features = builder.info.features
    return next((key for key in LABEL_FEATURES if key in features), LABEL_FEATURES[0])


def dataset_spec(builder: tfds.core.DatasetBuilder) -> DatasetSpec:
    features, label = builder.info.features, label_feature(builder)
    missing = [key for key in ("image", label) if key not in features]
    if missing:
        raise DatasetError(f"dataset {builder.name!r} has no {missing} feature(s); vit_jax needs 'image' and 'label'")
    names = tuple(features[label].names)
    return DatasetSpec(builder.name, len(names), names, tuple(features["image"].shape))  # type: ignore[arg-type]


def open_split(builder: tfds.core.DatasetBuilder, split: str, *, keep_encoded: bool = False
               ) -> Sequence[dict[str, Any]]:
    """Random access to the decoded examples (`{'image': uint8 (H, W, C) or (T, H, W, C), 'label': int, ...}`)
    of `split`. `keep_encoded`: still images come as `EncodedImage`s (their file bytes), which the training
    preprocessing crops after decoding without a whole-image array (`vit_jax.data.encoded_image`)."""
    split_size(builder, split)  # the clear error for an unknown split
    keep = keep_encoded and keeps_encoded(builder.info.features["image"])
    source = builder.as_data_source(split=split, decoders={"image": KeepEncoded()} if keep else None)
    key = label_feature(builder)
    return source if key == "label" else Relabelled(source, key)


class Relabelled(Sequence[dict[str, Any]]):
    """A source whose examples hold their class under another name (`LABEL_FEATURES`), read with it as `label`."""

    def __init__(self, source: Sequence[dict[str, Any]], key: str):
        self._source, self._key = source, key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self._relabelled(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        getitems = getattr(self._source, "__getitems__", None)
        examples = getitems(indices) if getitems else [self._source[i] for i in indices]
        return [self._relabelled(example) for example in examples]

    def _relabelled(self, example: dict[str, Any]) -> dict[str, Any]:
        return {**example, "label": example[self._key]}


class InMemorySource(Sequence[dict[str, Any]]):
    """A split read and decoded once into memory: small datasets then cost no decoding per step. `transform`: a
    deterministic per-example step (the resize to the training size) done once here instead of on every read."""

    def __init__(self, source: Sequence[dict[str, Any]], chunk: int = 1024,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        getitems = getattr(source, "__getitems__", None)
        self._examples: list[dict[str, Any]] = []
        for start in range(0, len(source), chunk):
            indices = list(range(start, min(start + chunk, len(source))))
            examples = getitems(indices) if getitems else [source[i] for i in indices]
            self._examples.extend(map(transform, examples) if transform else examples)

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self._examples[index]


def fits_in_memory(spec: DatasetSpec, num_examples: int, budget_bytes: int = 512 * 2**20) -> bool:
    """Whether a split of fixed-size images (or videos) takes less than `budget_bytes` decoded."""
    if None in spec.image_shape:
        return False
    return num_examples * math.prod(spec.image_shape) <= budget_bytes
