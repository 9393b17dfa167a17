"""Where fine-tuning starts from: the parameters of a vit_jax workdir (orbax), an `.npz` file, or a Hub checkpoint
in timm's or transformers' layout (`hf-hub:OWNER/NAME`, a Hub-layout directory, a `.safetensors` file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vit_jax.checkpoint.hub import is_timm_spec, read_timm_checkpoint
from vit_jax.checkpoint.manager import CHECKPOINT_DIR, TrainCheckpoints, model_params
from vit_jax.checkpoint.npz import load_npz, split_submodel
from vit_jax.checkpoint.timm_layout import TimmArchitecture, architecture_from_timm, params_from_timm
from vit_jax.config import CONFIG_FILE, build_model, saved_config
from vit_jax.models.vit import token_grid


@dataclasses.dataclass(frozen=True)
class Pretrained:
    params: dict[str, Any]
    grid: tuple[int, int] | None  # the patch grid the position embeddings were trained for, when known
    source: str  # for messages: "workdirs/digits step 2000" or "ViT-B_16.npz"


def is_workdir(path: str | Path) -> bool:
    return (Path(path) / CHECKPOINT_DIR).is_dir()


def load_pretrained(path: str | Path, step: int | None = None) -> Pretrained:
    """Parameters from `path`: a workdir (its latest checkpoint, or `step`; the weights' moving average when the run
    kept one, `config.ema`), an `.npz` file (any layout `load_npz`
    reads; `FILE.npz:KEY`, one model of several) or a Hub checkpoint in timm's or transformers' layout (see
    `vit_jax.checkpoint.hub`). Workdirs and Hub checkpoints also tell the grid their position embeddings were
    trained for."""
    if is_timm_spec(path):
        checkpoint = read_timm_checkpoint(path)
        arch = architecture_from_timm(checkpoint.state, checkpoint.config, checkpoint.source)
        return Pretrained(params_from_timm(checkpoint.state, arch), arch.options.get("posemb_grid"),
                          checkpoint.source)
    path = Path(path).expanduser()
    if is_workdir(path):
        checkpoints = TrainCheckpoints(path / CHECKPOINT_DIR)
        steps = checkpoints.all_steps()
        step = checkpoints.latest_step() if step is None else step
        if step is None or step not in steps:
            raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {checkpoints.directory}; "
                                    f"steps: {steps}")
        params = model_params(checkpoints.restore(step))
        checkpoints.close()
        return Pretrained(params, _trained_grid(path), f"{path} step {step}")
    if split_submodel(path)[0].is_file():  # FILE.npz or FILE.npz:KEY
        return Pretrained(load_npz(path), None, str(path))
    raise FileNotFoundError(f"{str(path)!r} is neither an .npz file nor a vit_jax workdir (with {CHECKPOINT_DIR}/) "
                            f"nor a Hub checkpoint (hf-hub:REPO, .safetensors, a directory with model.safetensors or "
                            f"open_clip_model.safetensors)")


def timm_architecture(spec: str | Path) -> TimmArchitecture:
    """The vit_jax model of a timm checkpoint, from its config.json and tensor shapes (no weights are read)."""
    checkpoint = read_timm_checkpoint(spec, shapes_only=True)
    return architecture_from_timm(checkpoint.state, checkpoint.config, checkpoint.source)


def _trained_grid(workdir: Path) -> tuple[int, int] | None:
    """The grid the workdir's position table is stored at: its `posemb_grid` when set (the table is resized in
    the forward pass from there), else the training images' token grid."""
    if not (workdir / CONFIG_FILE).exists():
        return None
    config = saved_config(workdir)
    model = build_model(config.model, num_classes=1)
    if model.posemb_grid is not None:
        return tuple(model.posemb_grid)
    return token_grid(model, tuple(config.image_size))
