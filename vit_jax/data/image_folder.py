"""A user's own images as a TFDS dataset: a folder with one subfolder per class, built once, then read like any other.

    python -m vit_jax.data.image_folder /path/to/flowers --name flowers [--data-dir DIR] [--channels 3] [--strict]

Layouts: `ROOT/<class>/<image>` gives one `train` split (take a validation split by slicing, e.g.
`train[:90%]` / `train[90%:]`); `ROOT/<split>/<class>/<image>` with splits among `train`, `validation` (or `val`),
`test` gives those splits. Class names are the sorted subfolder names when the dataset is built; once built, the
dataset's own list is the one its labels index, whatever the folder holds since (a folder added later, or TFDS's
`1.0.0/` when the images live where TFDS writes the dataset, `DATA_DIR/NAME`). Images keep their own size (the
training pipeline resizes them) and are converted to RGB (or grayscale with `channels=1`). An unreadable image is
reported by path and skipped, or, with `strict`, stops the build.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import naming

from vit_jax.data.image_files import UnreadableImageError, converted, decoding, pil_mode

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_DIRS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TFDS_VERSION = re.compile(r"^\d+\.\d+\.\d+($|\.incomplete)")  # TFDS's version folders, finished or being written


def subfolders(folder: Path) -> list[Path]:
    """Sorted subfolders, without hidden ones and TFDS's own version folders (the dataset, where TFDS writes it
    inside the image folder)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and not _TFDS_VERSION.match(p.name))


def find_splits(root: Path) -> dict[str, Path]:
    """`{split: folder whose subfolders are classes}` for either layout."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    subdirs = subfolders(root)
    if not subdirs:
        raise ValueError(f"image folder {str(root)!r} has no subfolders; expected one subfolder per class")
    if all(p.name in SPLIT_DIRS for p in subdirs):
        return {SPLIT_DIRS[p.name]: p for p in subdirs}
    return {"train": root}


def class_names(split_dirs: dict[str, Path]) -> list[str]:
    """Sorted class subfolder names, the same in every split."""
    per_split = {split: [p.name for p in subfolders(folder)] for split, folder in split_dirs.items()}
    names = sorted(set().union(*per_split.values()))
    for split, found in per_split.items():
        if not found:
            raise ValueError(f"split folder {str(split_dirs[split])!r} has no class subfolders")
        missing = sorted(set(names) - set(found))
        if missing and split == "train":
            raise ValueError(f"classes {missing} have no folder in the train split {str(split_dirs[split])!r}")
    if len(names) < 2:
        folder = split_dirs.get("train", next(iter(split_dirs.values())))
        raise ValueError(f"image folder {str(folder)!r} has one class ({names[0]!r}); a classifier needs at least "
                         f"two class subfolders")
    return names


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def encoded_image(path: Path, channels: int) -> bytes:
    """The file's bytes if PIL reads it as PNG/JPEG in the wanted mode, else a PNG re-encoding; or a clear error."""
    mode = pil_mode(channels)
    with decoding(path):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format in ("PNG", "JPEG") and image.mode == mode:
                return data
            buffer = io.BytesIO()
            converted(image, mode).save(buffer, format="PNG")
            return buffer.getvalue()


def make_builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """A builder class named `name` (TFDS derives dataset names from class names); not registered globally."""
    if not _NAME.match(name) or naming.camelcase_to_snakecase(naming.snake_to_camelcase(name)) != name:
        raise ValueError(f"dataset name {name!r} must be snake_case: lowercase letters, digits and '_' (e.g. 'flowers')")
    return type(naming.snake_to_camelcase(name), (_ImageFolderBuilder,), {}, skip_registration=True)


class _ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, folder: str | Path, channels: int = 3, strict: bool = False, **kwargs):
        self._folder = Path(folder).expanduser().resolve()
        self._channels = channels
        self._strict = strict
        self._split_dirs: dict[str, Path] = {}
        self._classes = self._built_classes(kwargs.get("data_dir"))
        if self._classes is None:  # not built yet: the folder says
            self._split_dirs = find_splits(self._folder)
            self._classes = class_names(self._split_dirs)
        super().__init__(**kwargs)
        # TFDS rebuilds a pickled builder (a data source sent to grain's worker processes) from these arguments
        self._original_state.update(folder=str(self._folder), channels=channels, strict=strict)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Images from {self._folder}",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, self._channels)),
                "label": tfds.features.ClassLabel(names=self._classes),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _built_classes(self, data_dir: str | None) -> list[str] | None:
        """The class names of this dataset as built (TFDS's `label.labels.txt`), None before it is built."""
        prepared = Path(data_dir or tfds.core.constants.DATA_DIR).expanduser() / self.name / str(self.VERSION)
        labels = prepared / "label.labels.txt"
        if not (prepared / "dataset_info.json").is_file() or not labels.is_file():
            return None
        return labels.read_text().splitlines()

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager
        return {split: self._generate_examples(folder) for split, folder in self._split_dirs.items()}

    def _generate_examples(self, folder: Path) -> Iterator[tuple[str, dict]]:
        skipped = []
        for label, class_name in enumerate(self._classes):
            for path in image_files(folder / class_name):
                try:
                    image = encoded_image(path, self._channels)
                except UnreadableImageError as error:
                    if self._strict:
                        raise
                    logging.warning("%s; skipped (pass strict=True to stop instead)", error)
                    skipped.append(path)
                    continue
                relative = str(path.relative_to(self._folder))
                yield relative, {"image": image, "label": label, "file_name": relative}
        if skipped:
            logging.warning("skipped %d unreadable image(s) under %s", len(skipped), folder)


def build_image_folder(
    folder: str | Path, name: str, *, data_dir: str | None = None, channels: int = 3, strict: bool = False
) -> tfds.core.DatasetBuilder:
    """Builds (once) and returns the TFDS dataset `name` from `folder`, in ArrayRecord format."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels!r}")
    builder = make_builder_class(name)(folder=folder, channels=channels, strict=strict, data_dir=data_dir,
                                       file_format="array_record")
    builder.download_and_prepare()
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.data.image_folder", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--name", required=True, help="dataset name to use in configs (snake_case)")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                        help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        builder = build_image_folder(args.folder, args.name, data_dir=args.data_dir, channels=args.channels,
                                     strict=args.strict)
    except (ValueError, OSError) as error:  # OSError: a data directory that cannot be made
        parser.exit(2, f"error: {error}\n")
    splits = ", ".join(f"{s}: {info.num_examples}" for s, info in builder.info.splits.items())
    print(f"dataset {args.name!r} in {builder.data_dir} ({splits}); use it with --config.dataset={args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
