"""A checkpoint as a ready-to-run model: the module, its parameters, the evaluation preprocessing and class names.

`predict` and `visualize` take either a vit_jax workdir (its config says everything) or an `.npz` file, whose
architecture is read off the parameter shapes (width, depth, heads, MLP width, patch size, channels, pooling,
classes, a hybrid's ResNet stem), so a file needs no flags beyond what it cannot say: the image size when its
position table is not square, the value range, and where class names come from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.checkpoint.hub import is_timm_spec
from vit_jax.checkpoint.npz import is_naflex, load_npz
from vit_jax.checkpoint.pretrained import is_workdir, load_pretrained, timm_architecture
from vit_jax.config import CONFIG_FILE, build_model, saved_config
from vit_jax.data.imagenet_classes import imagenet_class_names
from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import DatasetError, dataset_builder, dataset_spec
from vit_jax.models.encoder import ENCODER, SCANNED_BLOCKS, unstack_encoder_blocks
from vit_jax.models.heads import num_prefix_tokens
from vit_jax.models.variants import nearest_variant, parse_variant
from vit_jax.models.vit import VisionTransformer, pixel_patch_size, token_grid


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    model: VisionTransformer  # unscanned, float32
    params: dict[str, Any]  # per-layer encoder blocks
    preprocess: Preprocess  # its `eval` is what evaluation does to an image
    channels: int
    class_names: tuple[str, ...]
    source: str  # for titles and messages

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.image_size

    @property
    def grid(self) -> tuple[int, int]:
        return token_grid(self.model, self.image_size)

    @property
    def num_prefix(self) -> int:
        return num_prefix_tokens(self.model.classifier)

    def at_image_size(self, size: tuple[int, int]) -> TrainedModel:
        """The model fed `size` images (their evaluation view at that size, as timm's `--img-size`): a learned
        table is resized in the forward pass as its own codebase resizes it, sin-cos and rotary encodings are
        computed for the new grid. A ValueError when the patches do not tile `size`, or for a video model."""
        size = (int(size[0]), int(size[1]))
        if size == tuple(self.image_size):
            return self
        if self.model.tubelet_size is not None:
            raise ValueError(f"image size {size[0]}x{size[1]}: {self.source} is a video model, which runs at the "
                             f"frame size it was trained at ({self.image_size[0]}x{self.image_size[1]})")
        token_grid(self.model, size)
        preprocess = dataclasses.replace(self.preprocess, image_size=size, max_patches=None)
        return dataclasses.replace(self, preprocess=preprocess)


def _at(trained: TrainedModel, size: tuple[int, int] | None) -> TrainedModel:
    return trained if size is None else trained.at_image_size(size)


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(int(side) for side in size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"image size {size!r}: expected one or two positive integers (height, width)")
    return hw  # type: ignore[return-value]


def load_trained_model(checkpoint: str | Path | None = None, *, workdir: str | Path | None = None,
                       npz: str | Path | None = None, step: int | None = None, variant: str | None = None,
                       image_size: int | Sequence[int] | None = None,
                       value_range: tuple[float, float] = (-1.0, 1.0), dataset: str | None = None,
                       data_dir: str | None = None) -> TrainedModel:
    """The model of `checkpoint`: a vit_jax workdir, an `.npz` file, or a Hub checkpoint in timm's or
    transformers' layout (`hf-hub:OWNER/NAME`, a Hub-layout directory, a `.safetensors` file; see
    `vit_jax.checkpoint.hub`). `workdir=` and `npz=` say which
    explicitly; give exactly one of the three. `image_size`: the size the model is fed (`TrainedModel.at_image_size`;
    an `.npz` file's default: the position table's square grid times the patch size, other checkpoints' the size
    they evaluate at). The other options serve `.npz` files: `variant` (checked against the file's shapes),
    `value_range`, and `dataset` (class names from its metadata). A Hub checkpoint brings its preprocessing (timm's
    `pretrained_cfg`, transformers' `preprocessor_config.json`) and its class names (transformers' `id2label`)."""
    if sum(spec is not None for spec in (checkpoint, workdir, npz)) != 1:
        raise ValueError("give exactly one checkpoint: a workdir, an .npz file or a timm checkpoint")
    given = dict(step=step, variant=variant, image_size=image_size,
                 value_range=None if tuple(value_range) == (-1.0, 1.0) else value_range, dataset=dataset,
                 data_dir=data_dir)
    size = None if image_size is None else _as_hw(image_size)
    if checkpoint is not None:
        kind = checkpoint_kind(checkpoint)
        if kind == "hub":
            _refuse_unused("a timm checkpoint", "brings its own architecture and preprocessing", given,
                           ("dataset", "data_dir", "image_size"))
            return _at(_from_timm(str(checkpoint), dataset, data_dir), size)
        path = Path(checkpoint).expanduser()
        workdir, npz = (path, None) if kind == "workdir" else (None, path)
    if workdir is not None:
        _refuse_unused("a workdir", "brings its own model, preprocessing and dataset (config.json)", given,
                       ("step", "image_size"))
        return _at(_from_workdir(Path(workdir).expanduser(), step), size)
    _refuse_unused("an .npz file", "has no checkpoint steps", given, ("variant", "image_size", "value_range",
                                                                      "dataset", "data_dir"))
    return _from_npz(npz, variant, size, value_range, dataset, data_dir)


def checkpoint_kind(checkpoint: str | Path) -> str:
    """"hub" (timm's or transformers' layout), "workdir" or "npz": which of `load_trained_model`'s readers takes
    `checkpoint`, and so which of its options apply."""
    if is_timm_spec(checkpoint):
        return "hub"
    return "workdir" if is_workdir(Path(checkpoint).expanduser()) else "npz"


def _refuse_unused(kind: str, why: str, given: Mapping[str, Any], used: Sequence[str]) -> None:
    """An option the checkpoint's kind does not read is an error, not silently ignored."""
    unused = [name for name, value in given.items() if value is not None and name not in used]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not used with {kind}, which {why}; leave "
                         f"{'it' if len(unused) == 1 else 'them'} out")


def _from_timm(spec: str, dataset: str | None, data_dir: str | None) -> TrainedModel:
    pretrained = load_pretrained(spec)
    arch = timm_architecture(spec)
    model = VisionTransformer(**arch.options)
    preprocess = Preprocess(**arch.preprocessing, **arch.evaluation)
    num_classes = _num_classes(pretrained.params)
    labels = arch.pretrained_cfg.get("label_names")  # a transformers checkpoint's id2label
    own = tuple(labels) if labels and len(labels) == num_classes else None
    names = (_class_names(dataset, data_dir, num_classes) if dataset else own or imagenet_class_names(num_classes)
             or _numbered(num_classes))
    return TrainedModel(model, pretrained.params, preprocess, arch.channels, names, pretrained.source)


def _from_workdir(workdir: Path, step: int | None) -> TrainedModel:
    if not is_workdir(workdir) or not (workdir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{str(workdir)!r} is not a vit_jax workdir (no checkpoints/ and {CONFIG_FILE})")
    config = saved_config(workdir)
    pretrained = load_pretrained(workdir, step)
    params = _unstacked(pretrained.params)
    model = build_model(config.model, num_classes=_num_classes(params)).clone(scan=False, dtype=None, remat=False)
    image_size = tuple(config.image_size)
    learned = model.posemb in ("learn", "factorized") or model.rope_ape
    if learned and model.posemb_grid is None and model.tubelet_size is None:  # a video model's table is sized by
        # its input's (frames, rows, columns) grid, as in training; an image model's is stored at its training grid
        # and resized for another (`TrainedModel.at_image_size`)
        model = model.clone(posemb_grid=token_grid(model, image_size))
    optional = lambda name: None if config.pp.get(name) is None else tuple(config.pp[name])
    preprocess = Preprocess(image_size=image_size, value_range=tuple(config.pp.value_range),
                            resize_method=config.pp.resize_method, mean=optional("mean"), std=optional("std"),
                            crop_pct=config.pp.get("crop_pct", 1.0), crop_mode=config.pp.get("crop_mode", "squash"))
    names = _class_names(config.dataset, config.get("data_dir"), _num_classes(params))
    return TrainedModel(model, params, preprocess, _channels(params), names, pretrained.source)


def _from_npz(spec: str | Path, variant: str | None, image_size: int | Sequence[int] | None,
              value_range: tuple[float, float], dataset: str | None, data_dir: str | None) -> TrainedModel:
    pretrained = load_pretrained(spec)
    params = pretrained.params
    arch = architecture_of_npz(params, spec, naflex=is_naflex(spec))
    options = dict(arch.options)
    if variant is not None:
        _check_variant(variant, options, spec)
    if image_size is None:
        image_size = arch.require_image_size("--image-size")
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if "posembed_input" in params[ENCODER]:
        grid = token_grid(VisionTransformer(**options), image_size)  # the table is settled by the input's grid
        options["posemb_grid"] = _table_grid(params, options["classifier"], grid)
    model = VisionTransformer(**options)
    num_classes = _num_classes(params)
    names = _class_names(dataset, data_dir, num_classes) if dataset else _numbered(num_classes)
    return TrainedModel(model, params, Preprocess(image_size=image_size, value_range=tuple(value_range)),
                        _channels(params), names, pretrained.source)


NPZ_POSEMB_RESIZING = {False: dict(posemb_resize="bilinear_align_corners", posemb_antialias=False),
                       True: dict(posemb_resize="bilinear", posemb_antialias=True)}


@dataclasses.dataclass(frozen=True)
class NpzArchitecture:
    """What an `.npz` file's shapes say of its model."""
    options: dict[str, Any]  # VisionTransformer options, `num_classes` included; `sincos2d` where there is no table
    image_size: tuple[int, int] | None  # a square table's grid times the patch: the resolution it was trained at
    why_no_size: str  # when `image_size` is None
    channels: int
    source: str

    @property
    def posemb_resizing(self) -> tuple[str, bool]:
        """How its own code resizes the table (`resize_posemb`'s method and antialias), at load and in the forward
        pass alike."""
        return self.options["posemb_resize"], self.options["posemb_antialias"]

    @property
    def variant(self) -> str:
        return nearest_variant(self.options["hidden_size"], self.options["patch_size"])

    @property
    def model_options(self) -> dict[str, Any]:
        """`options` for a model config: without the class count (the dataset's)."""
        return {k: v for k, v in self.options.items() if k != "num_classes"}

    def require_image_size(self, flag: str) -> tuple[int, int]:
        if self.image_size is None:
            raise ValueError(f"{self.source}: {self.why_no_size}: give the image size ({flag})")
        return self.image_size


def npz_architecture(spec: str | Path) -> NpzArchitecture:
    """The architecture of an `.npz` (`FILE.npz:KEY`: one model of several) from its arrays' shapes alone."""
    return architecture_of_npz(load_npz(spec, shapes_only=True), spec, naflex=is_naflex(spec))


def architecture_of_npz(params: Mapping[str, Any], source: str | Path, naflex: bool = False) -> NpzArchitecture:
    """`naflex`: big_vision's NaFlex ViT, whose table is resized to each input's grid (bilinear, antialiased);
    vision_transformer's and big_vision's other ViTs resize it at load, as `scipy.ndimage.zoom(order=1)`."""
    options = architecture_of(params)
    options.update(NPZ_POSEMB_RESIZING[naflex])
    if "posembed_input" not in params[ENCODER] and options.get("relative_position_bias"):  # BEiT: the tables' grid
        options.setdefault("posemb", "none")
        attention = _unstacked(params)[ENCODER]["encoderblock_0"]["MultiHeadDotProductAttention_0"]
        rows, columns, _ = np.shape(attention["relative_position_bias"])
        ph, pw = pixel_patch_size(VisionTransformer(**options))
        return NpzArchitecture(options, ((rows + 1) // 2 * ph, (columns + 1) // 2 * pw), "", _channels(params),
                               str(source))
    if "posembed_input" not in params[ENCODER]:
        options.setdefault("posemb", "sincos2d")  # big_vision's fixed table: no parameters (RoPE-Mixed has its own)
        return NpzArchitecture(options, None, "no position table to read the image size from", _channels(params),
                               str(source))
    rows, side = _square_side(params, options["classifier"])
    if side is None:
        return NpzArchitecture(options, None, f"the position table's {rows} patch rows are not a square grid",
                               _channels(params), str(source))
    ph, pw = pixel_patch_size(VisionTransformer(**options))
    return NpzArchitecture(options, (side * ph, side * pw), "", _channels(params), str(source))


def architecture_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """VisionTransformer options read off the shapes of a parameter tree in vision_transformer's names."""
    try:
        kernel = np.shape(params["embedding"]["kernel"])
        encoder = params[ENCODER]
        blocks = sorted((k for k in encoder if k.startswith(f"{SCANNED_BLOCKS}_")), key=lambda k: int(k.rsplit("_")[1]))
        first = encoder[blocks[0]]
        heads = np.shape(first["MultiHeadDotProductAttention_0"]["query"]["kernel"])[1]
        mlp_dim = np.shape(first["MlpBlock_0"]["Dense_0"]["kernel"])[1]
    except (KeyError, IndexError) as error:
        raise ValueError(f"not a ViT parameter tree in vision_transformer's names: missing {error}") from None
    classifier = ("map" if "MAPHead_0" in params else "token_distilled" if "dist" in params
                  else "token" if "cls" in params else "gap")
    pooling: dict[str, Any] = {}
    if classifier == "map":  # over the class token too when there is one; its own heads and MLP width
        classifier = "token_map" if "cls" in params else "map"
        head = params["MAPHead_0"]
        pool_heads = np.shape(head["MultiHeadDotProductAttention_0"]["query"]["kernel"])[1]
        pool_mlp = np.shape(head["MlpBlock_0"]["Dense_0"]["kernel"])[1]
        pooling = dict(map_num_heads=None if pool_heads == heads else pool_heads,
                       map_mlp_dim=None if pool_mlp == mlp_dim else pool_mlp)
    head = np.shape(params.get("head", {}).get("kernel", ()))
    if classifier == "token" and not {"pre_logits", "fc_norm"} & set(params) and head[:1] == (2 * kernel[3],):
        classifier = "token_and_gap"  # a head over the class token and the mean patch token side by side
    return dict(
        num_classes=_num_classes(params), patch_size=(kernel[0], kernel[1]), hidden_size=kernel[3],
        num_layers=len(blocks), mlp_dim=mlp_dim, num_heads=heads, classifier=classifier,
        representation_size=np.shape(params["pre_logits"]["kernel"])[1] if "pre_logits" in params else None,
        final_norm="encoder_norm" in encoder or "fc_norm" in params, fc_norm="fc_norm" in params,
        **pooling, **_stem_of(params), **_options_in_parameters(params, first), **_kv_heads_of(encoder, blocks),
    )


def _kv_heads_of(encoder: Mapping[str, Any], blocks: list[str]) -> dict[str, Any]:
    """Grouped-query attention's key/value heads per block, off the `key` kernels `(D, kv_heads, hd)`."""
    counts = tuple(np.shape(encoder[b]["MultiHeadDotProductAttention_0"]["key"]["kernel"])[1] for b in blocks)
    heads = np.shape(encoder[blocks[0]]["MultiHeadDotProductAttention_0"]["query"]["kernel"])[1]
    if all(c == heads for c in counts):
        return {}
    return {"num_kv_heads": counts[0] if len(set(counts)) == 1 else counts}


def _options_in_parameters(params: Mapping[str, Any], block: Mapping[str, Any]) -> dict[str, Any]:
    """The options other than the defaults that leave parameters of their own (vit_jax's own exports: registers,
    layer scale, SwiGLU, RMSNorms, sub-LNs, ...); only those that differ from `VisionTransformer`'s defaults."""
    attention, mlp, embedding, encoder = (block["MultiHeadDotProductAttention_0"], block["MlpBlock_0"],
                                          params["embedding"], params[ENCODER])
    width = np.shape(embedding["kernel"])[-1]
    query = np.shape(attention["query"]["kernel"])
    found = dict(
        layer_scale=1e-5 if "LayerScale_0" in block else None,  # its initial value; the trained one is loaded
        layer_scale_attention_only="LayerScale_0" in block and "LayerScale_1" not in block,
        gated_mlp="Gate" in mlp, mlp_norm="LayerNorm_0" in mlp, attention_norm="LayerNorm_0" in attention,
        qk_norm="query_norm" in attention, rms_norm="bias" not in block["LayerNorm_0"],
        proj_bias="bias" in attention["out"], qkv_bias="bias" in attention["query"],
        qkv_dim=query[1] * query[2] if query[1] * query[2] != width else None,
        pre_norm="pre_norm" in encoder, embedding_norm="embedding_norm" in embedding,
        patch_norm="patch_norm" in embedding, patch_bias="bias" in embedding,
        num_registers=int(np.shape(encoder["registers"])[1]) if "registers" in encoder else 0,
        posemb="rope_mixed" if "rope_frequencies" in block else None,
        relative_position_bias="relative_position_bias" in attention,
    )
    defaults = {f.name: f.default for f in dataclasses.fields(VisionTransformer)}
    return {k: v for k, v in found.items() if v is not None and v != defaults[k]}


def _stem_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """A hybrid's ResNet stem (a `conv_root` at the root): units per stage, counted from `block{i}/unit{j}`, and the
    width factor from the root conv's width (`64 * width_factor`). Empty for a plain ViT."""
    if "conv_root" not in params:
        return {}
    num_layers = []
    while f"block{len(num_layers) + 1}" in params:
        stage = params[f"block{len(num_layers) + 1}"]
        num_layers.append(sum(1 for name in stage if name.startswith("unit")))
    return dict(resnet_num_layers=tuple(num_layers),
                resnet_width_factor=np.shape(params["conv_root"]["kernel"])[3] / 64)


def _check_variant(variant: str, options: dict[str, Any], path: str | Path) -> None:
    expected = parse_variant(variant)
    differ = {k: (v, options[k]) for k, v in expected.items() if k in options and tuple(np.atleast_1d(v)) != tuple(
        np.atleast_1d(options[k]))}
    if differ:
        listed = ", ".join(f"{k} {want} (file: {got})" for k, (want, got) in differ.items())
        raise ValueError(f"--variant {variant} does not match {path}: {listed}")


def _square_side(params: Mapping[str, Any], classifier: str) -> tuple[int, int | None]:
    """The position table's patch rows, and the side of the square grid they form (None if not a square)."""
    rows = np.shape(params[ENCODER]["posembed_input"]["pos_embedding"])[1] - num_prefix_tokens(classifier)
    side = math.isqrt(rows)
    return rows, side if side * side == rows else None


def _table_grid(params: Mapping[str, Any], classifier: str, grid: tuple[int, int]) -> tuple[int, int]:
    """The grid the learned table is stored at: the input grid if it fits, else the square one."""
    rows, side = _square_side(params, classifier)
    if rows == grid[0] * grid[1]:
        return grid
    if side is None:
        raise ValueError(f"the position table has {rows} patch rows, not {grid[0]}x{grid[1]} nor a square")
    return side, side


def _unstacked(params: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(params)
    return unstack_encoder_blocks(params) if SCANNED_BLOCKS in params.get(ENCODER, {}) else params


def _num_classes(params: Mapping[str, Any]) -> int | None:
    return int(np.shape(params["head"]["kernel"])[-1]) if "head" in params else None


def _channels(params: Mapping[str, Any]) -> int:
    first_layer = params["conv_root"] if "conv_root" in params else params["embedding"]  # the one that sees pixels
    return int(np.shape(first_layer["kernel"])[-2])  # (h, w, C, D), a tubelet kernel (t, h, w, C, D)


def _numbered(num_classes: int | None) -> tuple[str, ...]:
    return tuple(str(i) for i in range(num_classes or 0))


def _class_names(dataset: str, data_dir: str | None, num_classes: int | None) -> tuple[str, ...]:
    """The dataset's label names when its metadata is readable and has one per class; else "0", "1", ..."""
    try:
        names = dataset_spec(dataset_builder(dataset, data_dir)).class_names
    except (DatasetError, OSError, ValueError):
        return _numbered(num_classes)
    return tuple(names) if len(names) == num_classes else _numbered(num_classes)
