"""How each position encoding transfers to other resolutions: one model per encoding and seed, trained at 32x32 on
`cluttered_digits` (64x64 canvases with detail at several scales), evaluated at 16-64 pixels without fine-tuning
(learned tables once per resize method).

    python -m vit_jax.sweep --config=configs/sweeps/resolution_transfer.py --workdir=workdirs/resolution_study
    python -m vit_jax.sweep --config=configs/sweeps/resolution_transfer.py:finetune=100 --workdir=workdirs/resolution_study
    python -m vit_jax.sweep --config=configs/sweeps/resolution_transfer.py:digits --workdir=workdirs/resolution_study_digits

The second command adds, to the same study (the trained points are kept), 100 fine-tuning steps at each other
resolution from every trained model; the third runs the study on the 8x8 `sklearn_digits` (trained at 16x16,
evaluated at 8-32). The report is transfer.csv, transfer.md and transfer_*.png in the workdir.

Result of the first command (12 models, 15 min 35 s on 2 cores of an AMD EPYC Zen 4), top-1 test accuracy in %,
mean over seeds 0 and 1, at 16 / 24 / 32 (trained) / 48 / 64 pixels: learned table (bilinear) 30.7 / 50.3 / 59.1 /
51.5 / 34.2, factorized 30.4 / 52.4 / 62.5 / 52.3 / 33.1, sincos2d 29.0 / 50.9 / 60.2 / 41.1 / 24.6, rope_axial
31.9 / 58.8 / 69.7 / 52.4 / 26.5, rope_mixed 27.9 / 52.5 / 64.6 / 49.9 / 22.3, none 29.5 / 49.3 / 58.4 / 48.9 /
32.2; every method of resizing a table within 0.5 points. docs/resolution_transfer.md has the whole table, the
plot and which published effects it reproduces.
"""

from pathlib import Path

from vit_jax.config import load_config_file

ENCODINGS = ("learn", "factorized", "sincos2d", "rope_axial", "rope_mixed", "none")
SEEDS = (0, 1)
CONFIGS = Path(__file__).resolve().parent.parent


def _options(arg: str | None) -> tuple[bool, int]:
    """`digits` and `finetune=N` (joined by `+`): which data, and fine-tuning steps at each other resolution."""
    digits, steps = False, 0
    for word in filter(None, (arg or "").split("+")):
        if word == "digits":
            digits = True
        elif word.startswith("finetune=") and word[len("finetune="):].isdigit():
            steps = int(word[len("finetune="):])
        else:
            raise ValueError(f"unknown study argument {word!r}; use 'digits' and/or 'finetune=N'")
    return digits, steps


def get_config(arg: str | None = None):
    digits, _ = _options(arg)
    if digits:
        config = load_config_file(CONFIGS / "digits.py")
        config.model.posemb_grid = (4, 4)  # 16x16 in patches of 4
    else:
        config = load_config_file(CONFIGS / "cluttered_digits.py")
        config.num_steps = 1000  # 12 points in about 14 minutes on 2 cores
        config.model.posemb_grid = (8, 8)  # 32x32 in patches of 4: learned tables are resized from it
    config.eval_every = config.checkpoint_every = config.num_steps  # one evaluation and checkpoint, at the end
    config.log_pictures = "none"
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    return [{"model.posemb": encoding, "seed": seed} for encoding in ENCODINGS for seed in SEEDS]


def get_study(arg: str | None = None) -> dict:
    """Evaluation resolutions from half to twice the training one."""
    digits, steps = _options(arg)
    sides = (8, 12, 16, 24, 32) if digits else (16, 24, 32, 48, 64)
    return dict(sizes=tuple((s, s) for s in sides), split="test", finetune_steps=steps)
