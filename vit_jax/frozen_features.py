"""A checkpoint's representation (or its logits) of a dataset's splits, for evaluations that train nothing in the
backbone (k-NN, few-shot, linear probes; the classifier scored by `evaluate`): the command line they share, the
choice of dataset and splits, and the extraction.

The representation is what the checkpoint's head reads (timm's `forward_head(..., pre_logits=True)`: the pooled
token after `fc_norm` / `pre_logits`; a DINOv2 or CLIP tower's embedding), through the checkpoint's evaluation
view. A workdir brings its run's dataset, data dir and splits; any other checkpoint names `--dataset`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoint.adapt import HEADS
from vit_jax.checkpoint.trained_model import TrainedModel, checkpoint_kind, load_trained_model
from vit_jax.data.pipeline import eval_batches, rows_in_source_order
from vit_jax.distributed import COORDINATOR_HELP, MODES, MODES_HELP, initialize
from vit_jax.image_size_flag import add_image_size_option, image_size_argument
from vit_jax.sharding import DATA_AXIS, batch_sharding, host_tree_to_global, make_mesh, replicated, to_global
from vit_jax.whole_files import written_whole

DTYPES = ("float32", "bfloat16")  # the forward pass's compute types (parameters stay float32)
DATA_THREADS = max(2, min(16, os.cpu_count() or 2))  # a large split's decoding keeps up with an accelerator


class Extractor:
    """A checkpoint's representation of examples, compiled once for every split it reads: what the head reads,
    `(N, D)` float32, in global batches split over every device of every process (each process reads its share;
    every process gets them all); `dtype="bfloat16"` computes in bfloat16 (float32 parameters, as training's mixed
    precision). A grayscale dataset is fed to an RGB model as timm feeds it (the gray value in every channel); a
    NaFlex checkpoint is evaluated at its fixed image size. `head=True`: the logits instead; `outputs(x, batch)`:
    what to keep of them (or of the representation) per example, computed on the devices (any tree of arrays whose
    rows are the examples); `carry(example)`: arrays of each example the batch carries to `outputs` beside its
    label."""

    def __init__(self, trained: TrainedModel, dtype: str = "float32", head: bool = False,
                 outputs: Callable[[jax.Array, dict[str, jax.Array]], Any] | None = None,
                 carry: Callable[[dict[str, Any]], dict[str, np.ndarray]] | None = None, data_threads: int = 2):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
        mesh = make_mesh([(DATA_AXIS, -1)])
        self.data, everywhere = batch_sharding(mesh), replicated(mesh)
        self.head, self.everywhere = head, everywhere
        compute = None if dtype == "float32" else jnp.dtype(dtype)
        # without a head the model returns its representation
        model = trained.model.clone(dtype=compute) if head else trained.model.clone(num_classes=0, dtype=compute)
        self.set_params(trained.params)
        keep = outputs or (lambda x, batch: x)

        def forward(params: Any, batch: dict[str, jax.Array]) -> tuple[Any, jax.Array, jax.Array]:
            x = model.apply({"params": params}, batch["image"], train=False).astype(jnp.float32)
            return keep(x, batch), batch["label"], batch["mask"]

        self.forward = jax.jit(forward, out_shardings=everywhere)  # every process gets every process's rows
        preprocess = dataclasses.replace(trained.preprocess, channels=trained.channels, max_patches=None)
        self.preprocess = preprocess if carry is None else _Carrying(preprocess, carry)
        self.data_threads = data_threads  # threads decoding and resizing images (PIL releases the GIL)

    def set_params(self, params: dict[str, Any]) -> None:
        """Other parameters of the same model (a soup's candidates): nothing compiles again."""
        params = {name: p for name, p in params.items() if self.head or name not in HEADS}
        self.params = host_tree_to_global(params, jax.tree.map(lambda _: self.everywhere, params))

    def __call__(self, source: Sequence[dict[str, Any]], batch_size: int) -> tuple[Any, np.ndarray]:
        """The representations (or `outputs`) and labels of every example of `source`, in order, in global batches
        of about `batch_size`."""
        processes, local_devices = jax.process_count(), jax.local_device_count()
        local_batch = -(-batch_size // (processes * local_devices)) * local_devices
        batches = eval_batches(source, self.preprocess, batch_size=local_batch, process_index=jax.process_index(),
                               process_count=processes, num_threads=self.data_threads)
        return rows_in_source_order(batches, lambda batch: self.forward(self.params, to_global(batch, self.data)),
                                    local_batch, processes)


@dataclasses.dataclass(frozen=True)
class _Carrying:
    """A preprocessing whose evaluation view also carries arrays of the example (`Extractor`'s `carry`)."""
    preprocess: Any
    carry: Callable[[dict[str, Any]], dict[str, np.ndarray]]

    def eval(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        return {**self.preprocess.eval(example), **self.carry(example)}


def representations(trained: TrainedModel, source: Sequence[dict[str, Any]], batch_size: int,
                    dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """`(N, D)` representations and `(N,)` labels of every example of `source`, in order (`Extractor`)."""
    return Extractor(trained, dtype)(source, batch_size)


def label_rank(scores: Any, labels: Any) -> jax.Array:
    """Each row's label's rank among its class scores (0: first): classes scoring higher, and those scoring the same
    with a lower index, come before it. Works inside `jit` and on NumPy arrays."""
    own = jnp.take_along_axis(scores, jnp.maximum(labels, 0)[:, None], axis=1)
    ahead = (scores > own) | ((scores == own) & (jnp.arange(scores.shape[1]) < labels[:, None]))
    return jnp.sum(ahead, axis=1)


def argument_parser(prog: str, doc: str, splits: Mapping[str, str], saved: str = "representations"
                    ) -> argparse.ArgumentParser:
    """The options every frozen-feature command takes; `splits`: each split's role -> what its help says (one role
    is also `--split`); `saved`: what `--features` writes of each example."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a vit_jax workdir, an .npz file or a Hub checkpoint "
                                                            "(hf-hub:OWNER/NAME, a Hub-layout directory, .safetensors)")
    parser.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: the latest)")
    add_image_size_option(parser, "the size images are fed at (default: the checkpoint's own; an .npz file's: "
                                  "its position table's grid times the patch size)")
    parser.add_argument("--crop-pct", type=float, default=None,
                        help="the evaluation view's central crop: the fraction of the resized image kept (default: "
                             "the checkpoint's)")
    parser.add_argument("--dataset", default=None, help="a prepared TFDS dataset, a built-in one or "
                                                        "folder:/path (default for a workdir: its run's)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default for a workdir: its run's)")
    for role, help_text in splits.items():
        parser.add_argument(f"--{role}-split", *(["--split"] if len(splits) == 1 else []), default=None,
                            help=help_text)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-threads", type=int, default=DATA_THREADS,
                        help=f"threads decoding and resizing images (default: the cores, at most 16: {DATA_THREADS})")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the forward pass's compute type (bfloat16: the matrix units' type on GPUs and TPUs)")
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    parser.add_argument("--features", default=None, help=f"an .npz file for the {saved} and labels of each split "
                                                         f"(NAME, NAME_labels)")
    parser.add_argument("--distributed", choices=MODES, default="auto", help=MODES_HELP)
    parser.add_argument("--coordinator-address", default=None, help=COORDINATOR_HELP)
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    return parser


def start(args: argparse.Namespace) -> None:
    """`jax.distributed` where the command is one of several processes (each reads its share of every split;
    process 0 prints and writes the results); a ValueError for bad process flags."""
    initialize(args.distributed, args.coordinator_address, args.num_processes, args.process_id)


@dataclasses.dataclass(frozen=True)
class FrozenData:
    """The dataset a frozen-feature evaluation reads, checked before any model is: its splits by role."""
    dataset: str
    data_dir: str | None
    splits: dict[str, str]  # role ("train", "test", ...) -> split name
    sizes: dict[str, int]
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, ...]  # (H, W, C), or (T, H, W, C) for videos
    builder: Any

    @property
    def examples(self) -> str:
        """What the dataset holds, for messages."""
        return "videos" if len(self.image_shape) == 4 else "images"

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data_dir": self.data_dir,
                **{f"{role}_split": split for role, split in self.splits.items()},
                **{f"num_{role}": size for role, size in self.sizes.items()}}


def open_data(args: argparse.Namespace, defaults: Mapping[str, str]) -> FrozenData:
    """The dataset and splits: as given, else a workdir's run's (`{role}_split` in its config), else `defaults`
    (role -> split). A bad batch size, output path, dataset or split is a ValueError before anything is read."""
    from vit_jax.data.eval_crop import check_crop
    from vit_jax.data.sources import dataset_builder, dataset_spec, split_size
    from vit_jax.entry import check_output

    if args.batch_size <= 0 or args.data_threads <= 0:
        raise ValueError(f"--batch-size {args.batch_size} / --data-threads {args.data_threads}: expected positive "
                         f"integers")
    if args.crop_pct is not None:
        try:
            check_crop(args.crop_pct)
        except ValueError as error:
            raise ValueError(f"--crop-pct {args.crop_pct}: {error}") from None
    for path, flag in ((args.out, "--out"), (args.features, "--features")):
        if path is not None:
            check_output(path, flag)
    run: dict[str, Any] = {}
    if checkpoint_kind(args.checkpoint) == "workdir":
        from vit_jax.config import saved_config

        run = saved_config(Path(args.checkpoint).expanduser()).to_dict()
    dataset = args.dataset or run.get("dataset")
    if dataset is None:
        raise ValueError(f"{args.checkpoint}: not a vit_jax workdir, so --dataset must say what to evaluate on")
    data_dir = args.data_dir or run.get("data_dir")
    splits = {role: getattr(args, f"{role}_split") or run.get(f"{role}_split") or split
              for role, split in defaults.items()}
    builder = dataset_builder(dataset, data_dir)
    sizes = {role: split_size(builder, split) for role, split in splits.items()}
    spec = dataset_spec(builder)
    return FrozenData(dataset, data_dir, splits, sizes, spec.num_classes, tuple(spec.class_names),
                      tuple(spec.image_shape), builder)


def load_model(args: argparse.Namespace, data: FrozenData) -> TrainedModel:
    """The checkpoint's model, checked against the data before anything runs: images for an image model, videos
    for a video model, channels it can take."""
    trained = load_trained_model(args.checkpoint, step=args.step, image_size=image_size_argument(args.image_size))
    if args.crop_pct is not None:
        trained = dataclasses.replace(trained, preprocess=dataclasses.replace(trained.preprocess, crop_pct=args.crop_pct))
    videos, channels = len(data.image_shape) == 4, data.image_shape[-1]
    if videos != (trained.model.tubelet_size is not None):
        raise ValueError(f"{trained.source} is {'an image' if videos else 'a video'} model and dataset "
                         f"{data.dataset!r} holds {'videos' if videos else 'images'} "
                         f"({'x'.join(map(str, data.image_shape))})")
    try:
        dataclasses.replace(trained.preprocess, channels=trained.channels).check_channels(channels)
    except ValueError as error:
        raise ValueError(f"{trained.source} takes {trained.channels}-channel images and dataset {data.dataset!r} "
                         f"has {channels}-channel ones: {error}") from None
    return trained


def prepare(args: argparse.Namespace, defaults: Mapping[str, str],
            check: Callable[[FrozenData], None] | None = None) -> tuple[FrozenData, TrainedModel] | None:
    """A frozen-feature command's start: quiet logging, `jax.distributed` where asked, the dataset and splits
    (`open_data`), the command's own options (`check(data)`, before any model is read) and the model
    (`load_model`). None after printing a one-line error for bad input."""
    from vit_jax.console import quiet_logging

    quiet_logging()
    try:
        start(args)
        data = open_data(args, defaults)
        if check is not None:
            check(data)
        return data, load_model(args, data)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def split_representations(trained: TrainedModel, data: FrozenData, batch_size: int, dtype: str = "float32",
                          data_threads: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """role -> (representations, labels) of each split of `data`."""
    from vit_jax.data.sources import open_split

    extract = Extractor(trained, dtype, data_threads=data_threads)  # one compilation for the splits' batches
    return {role: extract(open_split(data.builder, split), batch_size) for role, split in data.splits.items()}


def save_features(path: str | Path, features: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Each split's representations under its role's name and its labels as `ROLE_labels` (plain arrays: no
    pickling)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for role, (x, labels) in features.items():
        arrays[role], arrays[f"{role}_labels"] = x, labels
    with written_whole([path]) as (partial,), open(partial, "wb") as file:
        np.savez(file, **arrays)


def report(args: argparse.Namespace, data: FrozenData, features: Mapping[str, tuple[np.ndarray, np.ndarray]],
           lines: Sequence[str], results: Mapping[str, Any]) -> None:
    """From process 0 only: `lines` printed, and what `--features` and `--out` ask for: `features` (each role's
    per-example arrays and labels), and `results` beside the checkpoint, the dataset and its splits, as JSON."""
    if jax.process_index() != 0:
        return
    print("\n".join(lines))
    if args.features is not None:
        save_features(args.features, features)
    if args.out is not None:
        path = Path(args.out).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": str(args.checkpoint), **data.describe(), **results}
        with written_whole([path]) as (partial,):
            partial.write_text(json.dumps(report, indent=2) + "\n")
