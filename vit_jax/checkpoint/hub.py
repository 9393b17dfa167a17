"""Where Hub checkpoints live (timm's layout, and transformers' renamed into it): `hf-hub:` repos, Hub-layout
directories, `.safetensors` files.

A SPEC is
- `hf-hub:OWNER/NAME` (optionally `@REVISION`): the repo's `config.json` and `model.safetensors`, resolved by
  `huggingface_hub` (its cache, `HF_HOME`, `HF_HUB_OFFLINE=1`);
- a directory in that layout (what `timm.models.save_for_hf` and transformers' `save_pretrained` write; a large
  checkpoint's shards with their `model.safetensors.index.json`);
- a `.safetensors` file, with the `config.json` beside it when there is one.
A transformers checkpoint (its `config.json` has a `model_type`: `google/vit-*`, `facebook/dinov2-*`,
`openai/clip-*`, ...) is renamed into timm's layout on reading (`transformers_layout`), with its
`preprocessor_config.json` when there is one; so are OpenCLIP's `open_clip_model.safetensors` with its
`open_clip_config.json` (`open_clip_layout`), timm's NaFlexVit files (`naflex_layout`) and DINOv2's and DINOv3's own
`.pth` files (`dinov2_layout`, `dinov3_layout`).
PyTorch pickles (`.bin`, `.pth`) are read only through `torch.load(weights_only=True)`, which refuses code; without
torch they are refused with the conversion to do. Nothing is unpickled otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.checkpoint.dinov2_layout import as_timm as dinov2_as_timm
from vit_jax.checkpoint.dinov2_layout import is_dinov2_state
from vit_jax.checkpoint.dinov3_layout import as_timm as dinov3_as_timm
from vit_jax.checkpoint.dinov3_layout import is_dinov3_state
from vit_jax.checkpoint.naflex_layout import as_vision_transformer, is_naflex_state
from vit_jax.checkpoint.open_clip_layout import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, is_open_clip_config
from vit_jax.checkpoint.open_clip_layout import as_timm as open_clip_as_timm
from vit_jax.checkpoint.transformers_layout import PREPROCESSOR_CONFIG, as_timm, is_transformers_config

HF_PREFIX = "hf-hub:"
WEIGHTS = "model.safetensors"
SHARDED_WEIGHTS = "model.safetensors.index.json"  # a checkpoint in several files: weight_map says which holds what
PICKLED_WEIGHTS = ("pytorch_model.bin",)
CONFIG = "config.json"


@dataclasses.dataclass(frozen=True)
class TimmCheckpoint:
    state: dict[str, np.ndarray]  # timm's tensor names -> float arrays
    config: dict[str, Any]  # config.json ({} when there is none)
    source: str  # for messages: the SPEC, or the file


def is_timm_spec(spec: str | Path) -> bool:
    """Whether SPEC names a Hub checkpoint, in timm's or transformers' layout (rather than a vit_jax workdir or an
    `.npz`)."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return True
    path = Path(text).expanduser()
    if path.suffix in (".safetensors", ".bin", ".pth"):
        return True
    return path.is_dir() and any((path / name).exists()
                                 for name in (WEIGHTS, SHARDED_WEIGHTS, OPEN_CLIP_WEIGHTS, *PICKLED_WEIGHTS))


def read_timm_checkpoint(spec: str | Path, shapes_only: bool = False) -> TimmCheckpoint:
    """The checkpoint SPEC names. `shapes_only`: the tensors are zero-memory placeholders of the right shapes (a
    safetensors header is all that is read), for building the model before loading anything."""
    text = str(spec)
    preprocessor = None
    if text.startswith(HF_PREFIX):
        weights, config, preprocessor = _from_hub(text[len(HF_PREFIX):])
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            weights = next((path / name for name in (WEIGHTS, SHARDED_WEIGHTS, OPEN_CLIP_WEIGHTS)
                            if (path / name).exists()), None)
            if weights is None:
                pickled = [path / name for name in PICKLED_WEIGHTS if (path / name).exists()]
                if not pickled:
                    raise FileNotFoundError(f"{path} has no {WEIGHTS} (expected the Hub layout: {WEIGHTS} + {CONFIG})")
                weights = pickled[0]
            config = path / (OPEN_CLIP_CONFIG if weights.name == OPEN_CLIP_WEIGHTS else CONFIG)
        elif path.is_file():
            weights, config = path, path.parent / (OPEN_CLIP_CONFIG if path.name == OPEN_CLIP_WEIGHTS else CONFIG)
        else:
            raise FileNotFoundError(f"{text!r}: no such file or directory (expected a .safetensors file, a Hub-layout "
                                    f"directory or hf-hub:REPO)")
        preprocessor = config.parent / PREPROCESSOR_CONFIG
    state = read_shapes(weights) if shapes_only else read_weights(weights)
    settings = read_config(config) if config and config.exists() else {}
    if is_open_clip_config(settings):
        state, settings = open_clip_as_timm(state, settings, text)
    elif is_transformers_config(settings):
        processing = read_config(preprocessor) if preprocessor and preprocessor.exists() else None
        state, settings = as_timm(state, settings, processing, text)
    if is_naflex_state(state):
        state, settings = as_vision_transformer(state, settings, text)
    elif is_dinov3_state(state):
        state, settings = dinov3_as_timm(state, settings, text)
    elif is_dinov2_state(state):
        state, settings = dinov2_as_timm(state, settings)
    return TimmCheckpoint(state, settings, text)


def _from_hub(repo: str) -> tuple[Path, Path, Path | None]:
    """The repo's weights, config and image processor's config (None without one) through huggingface_hub's cache
    (offline mode and HF_HOME honoured)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = repo.partition("@")
    download = lambda name: Path(hf_hub_download(repo_id, name, revision=revision or None))
    try:
        config = download(CONFIG)
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError) as error:
        try:  # an OpenCLIP repo (laion/*, apple/DFN*, ...): its own config and weights
            return download(OPEN_CLIP_WEIGHTS), download(OPEN_CLIP_CONFIG), None
        except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
            pass
        raise FileNotFoundError(f"hf-hub:{repo}: no {CONFIG} ({type(error).__name__}: {_first_line(error)}); offline "
                                f"(HF_HUB_OFFLINE=1) only the cache under HF_HOME is searched") from None
    try:
        weights = download(WEIGHTS)
    except (EntryNotFoundError, LocalEntryNotFoundError) as error:
        try:  # a large checkpoint in shards: the index, then every file it names, beside it in the snapshot
            weights = download(SHARDED_WEIGHTS)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            raise FileNotFoundError(f"hf-hub:{repo}: no {WEIGHTS} ({type(error).__name__}: {_first_line(error)}); "
                                    f"vit_jax reads the safetensors weights of timm's and transformers' Hub repos"
                                    ) from None
        for shard in _shard_names(weights):
            try:
                download(shard)
            except (EntryNotFoundError, LocalEntryNotFoundError) as missing:
                raise FileNotFoundError(f"hf-hub:{repo}: no {shard}, a shard {SHARDED_WEIGHTS} names "
                                        f"({type(missing).__name__}: {_first_line(missing)})") from None
    try:
        preprocessor = download(PREPROCESSOR_CONFIG)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        preprocessor = None
    return weights, config, preprocessor


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object (a config.json); got {type(config).__name__}")
    return config


def _shard_names(index: Path) -> list[str]:
    """The files of a sharded checkpoint, in the order its index first names them."""
    weight_map = read_config(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: no weight_map (expected {SHARDED_WEIGHTS}'s {{tensor: file}})")
    return list(dict.fromkeys(str(name) for name in weight_map.values()))


def _read_shards(index: Path, read: Any) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for name in _shard_names(index):
        shard = index.parent / name
        if not shard.exists():
            raise FileNotFoundError(f"{index}: names the shard {name}, which is not beside it")
        state.update(read(shard))
    return state


SMALL_TENSOR = 4096  # values: read even for shapes (a few kB: DINOv3's rotary periods and bias masks say its build)


def read_shapes(path: Path) -> dict[str, np.ndarray]:
    """Each tensor as a zero-memory float32 array of its shape (only the header of a safetensors file is read),
    but for tensors of at most `SMALL_TENSOR` values, which are read: some checkpoints record how the model is
    built in them."""
    if path.name.endswith(".index.json"):
        return _read_shards(path, read_shapes)
    if path.suffix != ".safetensors":
        return read_weights(path)
    from safetensors import SafetensorError, safe_open

    def shape_or_value(f: Any, name: str) -> np.ndarray:
        shape = f.get_slice(name).get_shape()
        if int(np.prod(shape)) <= SMALL_TENSOR:
            try:
                return _float32(f.get_tensor(name))
            except TypeError:  # bfloat16, which numpy cannot hold: its shape will do
                pass
        return np.broadcast_to(np.float32(0), shape)

    try:
        with safe_open(path, "np") as f:
            return {k: shape_or_value(f, k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """A state dict as float32 numpy arrays: safetensors directly (a sharded checkpoint's index: every shard),
    PyTorch pickles only with `weights_only=True`."""
    if path.name.endswith(".index.json"):
        return _read_shards(path, read_weights)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return {k: _float32(v) for k, v in load_file(path).items()}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None
        except TypeError as error:  # safetensors.numpy cannot hold bfloat16: go through torch when it is there
            return _through_torch(path, error)
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} is a PyTorch pickle; vit_jax never unpickles without torch's weights_only "
                         f"loader: install torch, or convert it to safetensors "
                         f"(safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors'))"
                         ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "float")}


def _through_torch(path: Path, error: Exception) -> dict[str, np.ndarray]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(f"{path}: {error}; bfloat16 safetensors need torch installed to be read") from None
    return {k: v.float().numpy() for k, v in load_file(path).items()}


def _float32(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
