"""Patch-size ablation on the bundled digits at their native 8x8: patch 1, 2, 4, 8 (64, 16, 4, 1 tokens), 2 seeds.

    python -m vit_jax.sweep --config=configs/sweeps/patch_size.py --workdir=workdirs/patch_size_sweep
    python -m vit_jax.sweep --config=configs/sweeps/patch_size.py:flexi --workdir=workdirs/patch_size_sweep

The first command trains the 8 dedicated models (configs/digits.py's model at 4 layers, 1,200 steps each); the second
adds one FlexiViT model, trained with a patch size drawn each step from {1, 2, 4, 8} for 4 x 1,200 steps (the
training compute of the four dedicated models of one seed) and evaluated at each size (the dedicated points are
already done, so they are skipped). Both write results.csv, results.md and the
plots into the workdir.

Result (2 CPU cores: the dedicated sweep took 12 min 26 s, the FlexiViT point 6 min 2 s), accuracy in % on the
180 validation and 360 test images, dedicated models as mean ± std over the two seeds, FlexiViT one model (seed 0):

| patch size | tokens / image | GFLOPs / image | dedicated val | dedicated test | FlexiViT val | FlexiViT test |
|---:|---:|---:|---:|---:|---:|---:|
| 1 | 64 | 0.0219 | 84.44 ± 1.57 | 81.94 ± 0.39 | 93.89 | 94.72 |
| 2 | 16 | 0.0047 | 94.17 ± 1.18 | 94.03 ± 0.59 | 93.89 | 97.50 |
| 4 | 4 | 0.0011 | 96.94 ± 0.39 | 97.08 ± 1.37 | 97.22 | 96.39 |
| 8 | 1 | 0.0003 | 97.78 ± 0.79 | 98.33 ± 0.79 | 91.67 | 92.22 |

At a fixed budget of steps the smaller patches (more tokens) learn slower on these tiny images; the one FlexiViT
model, given the training steps of the four dedicated ones together, matches them at patch 2 and 4 and beats the
dedicated patch-1 model by 12 points, while its single-token patch-8 mode trails.

    python -m vit_jax.sweep --config=configs/sweeps/patch_size.py:cluttered+flexi --workdir=workdirs/patch_size_cluttered

The same on `cluttered_digits` (64x64 canvases with detail at several scales, trained at 32x32 with
configs/cluttered_digits.py's recipe, 1,500 steps): patches 4, 8, 16 (64, 16, 4 tokens), 2 seeds, and a FlexiViT
model with the three models' steps (patch 8 stored). 5 min 42 s on 2 cores of an AMD EPYC Zen 4. Test accuracy in
%: dedicated 66.32 ± 1.47 / 60.52 ± 0.74 / 27.43 ± 2.36, FlexiViT 68.61 / 67.71 / 47.92 at patch 4 / 8 / 16. Here
the published trade-off appears: more tokens, more accuracy (for about 4x the GFLOPs per halving of the patch).
"""

from pathlib import Path

from vit_jax.config import load_config_file

PATCH_SIZES = (1, 2, 4, 8)
SEEDS = (0, 1)
STEPS = 1200


CLUTTERED_PATCH_SIZES = (4, 8, 16)  # at 32x32: 64, 16 and 4 tokens


def _words(arg: str | None) -> set[str]:
    words = set(filter(None, (arg or "").split("+")))
    if words - {"flexi", "cluttered"}:
        raise ValueError(f"unknown sweep argument {arg!r}; use nothing, 'flexi', 'cluttered' or 'cluttered+flexi'")
    return words


def get_config(arg: str | None = None):
    if "cluttered" in _words(arg):  # the 64x64 multi-scale task, trained at 32x32 (configs/cluttered_digits.py)
        config = load_config_file(Path(__file__).resolve().parent.parent / "cluttered_digits.py")
        config.log_pictures = "none"
        return config
    config = load_config_file(Path(__file__).resolve().parent.parent / "digits.py")
    config.image_size = (8, 8)  # native resolution: patch 1 is 64 tokens, patch 8 a single one
    config.model.num_layers = 4  # the results above were measured with configs/digits.py's earlier, 4-layer model
    config.pp.crop_padding = 1
    config.num_steps = STEPS
    config.eval_every = 400
    config.checkpoint_every = 400
    config.log_every = 50
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """Dedicated models for every patch size x seed; with `flexi`, also one FlexiViT model (seed 0) trained with
    the steps of one seed's dedicated models together; `cluttered`: on cluttered_digits at 32x32."""
    words = _words(arg)
    sizes, steps = (CLUTTERED_PATCH_SIZES, 1500) if "cluttered" in words else (PATCH_SIZES, STEPS)
    points = [{"model.patch_size": (p, p), "seed": s} for p in sizes for s in SEEDS]
    if "flexi" in words:  # one model for all sizes, with the training steps of the dedicated models
        stored, grid = (8, 4) if "cluttered" in words else (4, 4)  # the kernel's patch size, the table's grid
        points.append({"name": "flexivit", "flexi.patch_sizes": sizes, "model.patch_size": (stored, stored),
                       "model.posemb_grid": (grid, grid), "num_steps": len(sizes) * steps,
                       "eval_every": steps, "checkpoint_every": steps, "seed": 0})
    return points
