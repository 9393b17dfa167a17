"""Pictures of a trained ViT (the ViT paper's Figure 7, and attention on an image) as PNG files.

    python -m vit_jax.visualize --workdir=workdirs/digits --image=digit.png --out=pictures/
    python -m vit_jax.visualize --npz=ViT-B_16.npz --image=cat.jpg [--image=more.jpg ...] --out=pictures/

Writes `posemb_similarity.png` (cosine similarity of each patch position's embedding with every other's;
learned or sin-cos tables), `patch_filters.png` (principal components of the patch-embedding filters),
`patch_grid.png` (the first image cut into patches, with token indices), `attention_maps.png` (each head's
attention from the class token, or from the mean token for models without one, per layer),
`attention_rollout.png` (Abnar & Zuidema's rollout onto the first image) and `mean_attention_distance.png`
(per head vs depth, averaged over all images given), plus `pictures.npz` with the arrays behind them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vit_jax.entry import check_output
from vit_jax.interpret.figures import png_bytes
from vit_jax.interpret.pictures import Pictures, compute_pictures
from vit_jax.predict import add_model_arguments, load_from_arguments, preprocessed


def write_pictures(pictures: Pictures, out: Path, title_suffix: str = "", dpi: int = 100) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, figure in pictures.figures(title_suffix).items():
        path = out / f"{stem}.png"
        path.write_bytes(png_bytes(figure, dpi))
        written.append(path)
    arrays = {"attention_weights": pictures.weights, "attention_rollout": pictures.rollout,
              "mean_attention_distance": pictures.distances, "filter_components": pictures.filter_components,
              "filter_explained": pictures.filter_explained, "images": pictures.images}
    if pictures.similarity is not None:
        arrays["posemb_similarity"] = pictures.similarity
    np.savez(out / "pictures.npz", **arrays)
    return written + [out / "pictures.npz"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.visualize", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--image", action="append", required=True,
                        help="an image file; repeat for more (attention maps and rollout use the first)")
    parser.add_argument("--out", required=True, help="directory for the PNG files")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (default 100)")
    args = parser.parse_args(argv)
    if args.dpi <= 0:
        parser.exit(2, f"error: --dpi {args.dpi}: expected a positive integer\n")
    try:
        check_output(args.out, "--out", directory=True)
        trained = load_from_arguments(args)
        # one view for every image (a NaFlex processor's keeps each image's aspect: its square one here)
        trained = dataclasses.replace(trained, preprocess=dataclasses.replace(trained.preprocess, max_patches=None))
        images = np.stack([preprocessed(trained, path) for path in args.image])
    except (ValueError, FileNotFoundError) as error:  # UnreadableImageError is a ValueError
        parser.exit(2, f"error: {error}\n")
    pictures = compute_pictures(trained.model, trained.params, images, trained.preprocess.value_range)
    for path in write_pictures(pictures, Path(args.out), Path(args.image[0]).name, args.dpi):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
