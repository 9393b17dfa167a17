"""The fine-tuning demonstration on the bundled digits: train at 16x16, move to 32x32, fine-tune.

    python scripts/finetune_demo.py [--workdir workdirs/finetune_demo] [--out finetune_demo.md]

1. trains configs/digits.py at 16x16 (patch 4), unless the workdir already holds that run;
2. evaluates it at 32x32 before any fine-tuning step, with its position embeddings resized (4x4 -> 8x8 grid)
   and, for comparison, re-initialised;
3. fine-tunes at 32x32 for 300 steps (configs/finetune.py);
4. repeats 2 and 3 with patch 8 at 32x32 (the same 4x4 grid; the patch kernel PI-resized).
Prints and writes a Markdown table of test accuracies (the 360 held-out images).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from vit_jax.metric_writers import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def main_run(config: str, workdir: Path, *flags: str) -> float:
    """Runs `python -m vit_jax.main` (skipped when the workdir already finished) and returns its test accuracy."""
    records = read_metrics(workdir)
    if not any("test/accuracy" in r for r in records):
        command = [sys.executable, "-m", "vit_jax.main", f"--config={config}", f"--workdir={workdir}", *flags]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        records = read_metrics(workdir)
    return next(r["test/accuracy"] for r in reversed(records) if "test/accuracy" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdirs/finetune_demo")
    parser.add_argument("--out", default="finetune_demo.md")
    parser.add_argument("--steps", type=int, default=300)
    args, flags = parser.parse_known_args()  # other flags (e.g. --config.data_dir=...) go to every run
    root = Path(args.workdir).resolve()
    base = root / "digits_16"
    trained = main_run("configs/digits.py", base, *flags)

    rows = []
    for patch in (4, 8):
        def tuned(name: str, extra: str, patch: int = patch) -> float:
            return main_run(f"configs/finetune.py:init={base},res=32,patch={patch},{extra}", root / f"p{patch}_{name}",
                            *flags)

        rows.append((patch, tuned("resized", "steps=0"), tuned("reinit", "steps=0,init.posemb=reinit"),
                     tuned(f"finetuned{args.steps}", f"steps={args.steps}")))

    header = ("| | 16x16 (trained) | 32x32, posemb resized | 32x32, posemb re-initialised | "
              f"after {args.steps} steps at 32x32 |\n|---|---:|---:|---:|---:|")
    lines = [header]
    for patch, resized, reinit, finetuned in rows:
        name = "patch 4" if patch == 4 else f"patch {patch} (kernel PI-resized from 4)"
        first = f"{100 * trained:.2f}%" if patch == 4 else ""
        lines.append(f"| {name} | {first} | {100 * resized:.2f}% | {100 * reinit:.2f}% | {100 * finetuned:.2f}% |")
    table = "\n".join(lines)
    Path(args.out).write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
