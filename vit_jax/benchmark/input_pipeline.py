"""Input-pipeline throughput at 224² from JPEGs: vit_jax's grain training path beside torchvision's DataLoader.

    python -m vit_jax.benchmark.input_pipeline --workers 1 2 --out docs/benchmark_input_pipeline.json

Both sides read the same ImageNet-like JPEGs (built once, offline: see `write_jpeg_folder`), take an Inception crop
(torchvision's RandomResizedCrop: area 8-100%, aspect 3/4-4/3) resized bilinearly to 224², flip half of them and
batch them, in the same number of worker processes. Two outputs each: uint8 batches, normalised later on the
accelerator (`grain`: what `vit_jax.main` does, its train step applies `Preprocess.pixels_on_device`;
`torchvision_uint8`: `PILToTensor`, as timm's PrefetchLoader feeds a GPU), and float32 batches normalised with
ImageNet's mean and std in the workers (`grain_float32`, `torchvision`: `ToTensor` + `Normalize`). vit_jax reads
the TFDS ArrayRecord dataset built from the folder (`dataset='folder:DIR'`, the path `vit_jax.main` takes) through
`vit_jax.data.pipeline.train_iterator`; torchvision reads the folder with `ImageFolder` + `DataLoader` (the `bench`
extra). Each cell runs `--repeats` times in fresh processes; after `--warmup` batches, `--batches` are timed.
Reported per side and worker count (medians): images/s (wall), and images per CPU-second of the whole process tree
(the main process and its workers): the rate one core sustains, which says how many cores an accelerator needs.
`--rand-augment SPEC` adds RandAugment after the flip on both sides (DeiT's `rand-m9-mstd0.5-inc1`): vit_jax's
(`vit_jax.augment.rand_augment`) and timm's own `rand_augment_transform`, with the hyperparameters timm's
`transforms_imagenet_train` gives it (bilinear, ImageNet's mean as the fill); timm's Posterize at 0 bits, which
Pillow >= 11 refuses (timm 1.0.31's `inc1` set reaches it at magnitude 10), is given vit_jax's black image.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.benchmark.machine import cpu_description
from vit_jax.benchmark.worker import RESULT_PREFIX
from vit_jax.checkpoint.timm_layout import IMAGENET_MEAN, IMAGENET_STD

# each side's uint8 variant ships the augmented uint8 images (normalised on the accelerator: vit_jax's train step,
# timm's PrefetchLoader); the float32 variants normalise in the workers
SIDES = ("grain", "torchvision_uint8", "grain_float32", "torchvision")
REFERENCE = {"grain": "torchvision_uint8", "grain_float32": "torchvision"}
IMAGE_SIZE = 224
LONGER_SIDE = 500  # most ImageNet training images are 500 pixels on their longer side
NUM_CLASSES = 8


def write_jpeg_folder(root: Path, num_images: int, seed: int = 0) -> Path:
    """`root/train/<class>/<n>.jpg`: `num_images` JPEGs shaped like ImageNet's (longer side 500, aspect 3:4 to
    4:3, quality 85-95), cut at random places and sizes from scikit-learn's two bundled photographs (640x427):
    real photographic content, so JPEG sizes and decoding costs are a photo's. Written once; kept if complete."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    train = root / "train"
    if train.is_dir() and sum(1 for _ in train.rglob("*.jpg")) == num_images:
        return root
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))  # width / height
        h = int(rng.integers(height // 2, height + 1))
        w = min(width, round(h * aspect))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        image = Image.fromarray(photo[top : top + h, left : left + w])
        scale = LONGER_SIDE / max(image.size)
        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = train / f"class_{index % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:06d}.jpg", format="JPEG", quality=int(rng.integers(85, 96)))
    return root


def process_tree_cpu_seconds() -> float:
    """User + system CPU time of this process and its live descendants (the data workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def grain_batches(root: Path, data_dir: str, batch_size: int, workers: int, threads: int, uint8: bool,
                  rand_augment: str = "") -> Iterator[Any]:
    from vit_jax.augment.rand_augment import RandAugment
    from vit_jax.data.pipeline import train_iterator
    from vit_jax.data.preprocessing import Preprocess
    from vit_jax.data.sources import dataset_builder, open_split

    source = open_split(dataset_builder(f"folder:{root}", data_dir), "train", keep_encoded=True)
    preprocess = Preprocess(image_size=(IMAGE_SIZE, IMAGE_SIZE), value_range=(0.0, 1.0), train_crop="inception",
                            flip=True, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                            rand_augment=RandAugment.parse(rand_augment) if rand_augment else None)
    iterator = train_iterator(source, preprocess, batch_size=batch_size, seed=0, num_threads=threads,
                              num_workers=workers, uint8=uint8)
    for batch in iterator:
        yield batch["image"]


def torchvision_batches(root: Path, batch_size: int, workers: int, uint8: bool, rand_augment: str = ""
                        ) -> Iterator[Any]:
    from vit_jax.timm_compat import import_timm

    import_timm()  # torchvision's import on a CPU-only torch (see vit_jax.timm_compat)
    import torch
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform
    from torchvision import datasets, transforms

    augment = [transforms.RandomResizedCrop(IMAGE_SIZE),  # bilinear, area (0.08, 1), ratio (3/4, 4/3)
               transforms.RandomHorizontalFlip()]
    if rand_augment:  # as timm's transforms_imagenet_train sets it up for a bilinear run
        import timm.data.auto_augment as auto_augment

        from vit_jax.augment.rand_augment import OPERATIONS

        for name in ("Posterize", "PosterizeIncreasing"):  # 0 bits: black (PIL >= 11 raises, stopping timm's workers)
            auto_augment.NAME_TO_OP[name] = lambda img, bits, _op=OPERATIONS[name], **kwargs: _op(img, bits, 0, "")
        augment.append(rand_augment_transform(rand_augment, {
            "translate_const": int(IMAGE_SIZE * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN),
            "interpolation": Image.Resampling.BILINEAR}))
    to_tensor = ([transforms.PILToTensor()] if uint8
                 else [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    transform = transforms.Compose(augment + to_tensor)
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root / "train"), transform=transform), batch_size=batch_size, shuffle=True,
        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    while True:
        for images, _ in loader:
            yield images


def measure(side: str, root: Path, data_dir: str, batch_size: int, workers: int, threads: int, warmup: int,
            batches: int, rand_augment: str = "") -> dict[str, Any]:
    """Throughput of one side in this process: `warmup` untimed batches (workers start), then `batches` timed."""
    if side.startswith("grain"):
        stream = grain_batches(root, data_dir, batch_size, workers, threads, uint8=side == "grain",
                               rand_augment=rand_augment)
    else:
        stream = torchvision_batches(root, batch_size, workers, uint8=side == "torchvision_uint8",
                                     rand_augment=rand_augment)
    for _ in range(warmup):
        first = next(stream)
    shape, dtype = tuple(first.shape), str(first.dtype)
    cpu_start, wall_start = process_tree_cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next(stream)
    wall, cpu = time.perf_counter() - wall_start, process_tree_cpu_seconds() - cpu_start
    images = batches * batch_size
    return {"side": side, "workers": workers, "threads": threads if side.startswith("grain") else 1, "batch_size": batch_size,
            "batch_shape": shape, "dtype": dtype, "images": images, "wall_s": wall, "cpu_s": cpu,
            "images_per_s": images / wall, "images_per_cpu_s": images / cpu}


def run_in_fresh_process(args: argparse.Namespace, side: str, workers: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "vit_jax.benchmark.input_pipeline", "--measure", side,
               "--workers", str(workers), "--images", str(args.images), "--data-dir", args.data_dir,
               "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--batches", str(args.batches), "--rand-augment", args.rand_augment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    results = [line[len(RESULT_PREFIX):] for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        raise RuntimeError(f"{side} with {workers} workers failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(results[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.benchmark.input_pipeline",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="worker processes (0: in-process)")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="grain's reading threads per worker process")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches (workers starting)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per cell (the median is reported)")
    parser.add_argument("--num-images", type=int, default=2048, help="JPEGs written on first use")
    parser.add_argument("--images", type=Path, default=Path("~/tensorflow_datasets/vit_jax_jpeg_benchmark"),
                        help="folder for the JPEGs (written once)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir for the ArrayRecord dataset")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument("--rand-augment", default="", help="timm's RandAugment string on both sides ('': none)")
    parser.add_argument("--out", default="benchmark_input_pipeline.json")
    parser.add_argument("--measure", choices=SIDES, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args(argv)
    errors = [f"--workers {w}: expected >= 0" for w in args.workers if w < 0]
    errors += [f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer"
               for name in ("batch_size", "threads", "batches", "repeats", "num_images") if getattr(args, name) <= 0]
    if args.warmup < 1:
        errors.append(f"--warmup {args.warmup}: expected >= 1 (the first batch starts the workers)")
    if args.rand_augment:
        from vit_jax.augment.rand_augment import RandAugment

        try:
            RandAugment.parse(args.rand_augment)
        except ValueError as error:
            errors.append(f"--rand-augment: {error}")
    if errors:
        parser.exit(2, "".join(f"error: {e}\n" for e in errors))
    args.images = args.images.expanduser().resolve()
    from vit_jax.data.sources import default_data_dir

    args.data_dir = default_data_dir(args.data_dir)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        result = measure(args.measure, args.images, args.data_dir, args.batch_size, args.workers[0], args.threads,
                         args.warmup, args.batches, args.rand_augment)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    write_jpeg_folder(args.images, args.num_images)
    if "grain" in args.sides:  # build the ArrayRecord dataset here, not inside a timed measurement
        from vit_jax.data.sources import dataset_builder

        dataset_builder(f"folder:{args.images}", args.data_dir)
    results, summary = [], []
    for workers in args.workers:
        medians = {}
        for side in args.sides:
            runs = [run_in_fresh_process(args, side, workers) for _ in range(args.repeats)]
            results.extend(runs)
            medians[side] = {key: float(np.median([r[key] for r in runs])) for key in ("images_per_s",
                                                                                        "images_per_cpu_s")}
            rates = sorted(r["images_per_s"] for r in runs)
            print(f"{side:>17} workers={workers}: {medians[side]['images_per_s']:6.1f} img/s "
                  f"({rates[0]:.1f}-{rates[-1]:.1f}), {medians[side]['images_per_cpu_s']:6.1f} img per CPU-s",
                  flush=True)
        for side, median in medians.items():
            row = {"side": side, "workers": workers, **median}
            reference = medians.get(REFERENCE.get(side, ""))
            if reference:
                row["vs_torchvision"] = median["images_per_s"] / reference["images_per_s"]
                row["vs_torchvision_per_cpu_s"] = median["images_per_cpu_s"] / reference["images_per_cpu_s"]
                print(f"{side:>17} / {REFERENCE[side]}: {row['vs_torchvision']:.2f}x img/s, "
                      f"{row['vs_torchvision_per_cpu_s']:.2f}x per CPU-s", flush=True)
            summary.append(row)
    command = "python -m vit_jax.benchmark.input_pipeline " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu_description(), "command": command,
              "num_images": args.num_images, "image_size": IMAGE_SIZE, "rand_augment": args.rand_augment,
              "summary": summary,
              "results": results}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
