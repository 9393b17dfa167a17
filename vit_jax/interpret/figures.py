"""The pictures, drawn with matplotlib's object API (no pyplot state, so it is safe inside a training loop).

Grids of small maps are drawn as one mosaic image with blank separators, which stays fast for ViT-B/16's 14x14
grid of 14x14 maps. Every figure has a title and axis labels, and a colour bar where colours stand for values.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIMILARITY_CMAP = "viridis"
ATTENTION_CMAP = "inferno"


def mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """`(R, C, h, w[, 3])` tiles -> one `(R*(h+gap)-gap, C*(w+gap)-gap[, 3])` image, NaN (blank) between tiles."""
    rows, cols, h, w = tiles.shape[:4]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[4:]), np.nan)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[r, c]
    return out


def _tile_ticks(axis, count: int, size: int, gap: int, which: str, labels: list[str]) -> None:
    centres = [i * (size + gap) + (size - 1) / 2 for i in range(count)]
    step = max(1, count // 16)  # at most ~16 labels per axis
    (axis.set_xticks if which == "x" else axis.set_yticks)(centres[::step], labels[::step])


def posemb_similarity_figure(similarity: np.ndarray, title: str = "") -> Figure:
    """Tile (i, j): the cosine similarity of patch (i, j)'s position embedding with every patch's."""
    gh, gw = similarity.shape[:2]
    figure = Figure(figsize=(max(5.5, 2.2 + 0.45 * gw), max(4.5, 1.0 + 0.45 * gh)), layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(mosaic(similarity), cmap=SIMILARITY_CMAP, vmin=-1, vmax=1, interpolation="nearest")
    _tile_ticks(axis, gw, gw, 1, "x", [str(j + 1) for j in range(gw)])
    _tile_ticks(axis, gh, gh, 1, "y", [str(i + 1) for i in range(gh)])
    axis.set_xlabel("input patch column")
    axis.set_ylabel("input patch row")
    axis.set_title(title or "Position embedding similarity")
    figure.colorbar(image, ax=axis, label="cosine similarity")
    return figure


def patch_filters_figure(components: np.ndarray, explained: np.ndarray, title: str = "") -> Figure:
    """Principal components of the patch filters as image tiles, all on one scale (each is unit-norm)."""
    count, ph, pw, channels = components.shape
    cols = min(count, 7)
    rows = -(-count // cols)
    figure = Figure(figsize=(1.5 * cols + 1.2, 1.6 * rows + 0.9), layout="constrained")
    scale = float(np.abs(components).max()) or 1.0
    axes = figure.subplots(rows, cols, squeeze=False)
    image = None
    for index, axis in enumerate(axes.ravel()):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.axis("off")
            continue
        tile = components[index]
        if channels == 3:
            axis.imshow(np.clip(0.5 + tile / (2 * scale), 0, 1), interpolation="nearest")
        else:
            image = axis.imshow(tile[..., 0], cmap="gray", vmin=-scale, vmax=scale, interpolation="nearest")
        axis.set_title(f"PC {index + 1} ({explained[index]:.0%})", fontsize=8)
    for axis in axes[-1]:
        axis.set_xlabel(f"{pw} px")
    for axis in axes[:, 0]:
        axis.set_ylabel(f"{ph} px")
    figure.suptitle(title or f"Patch embedding filters: first {count} principal components (variance explained)")
    if image is not None:
        figure.colorbar(image, ax=axes, label="filter weight", shrink=0.8)
    return figure


def display_image(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """A preprocessed `(h, w, C)` image back to [0, 1] for drawing (`(h, w)` when gray)."""
    lo, hi = value_range
    shown = np.clip((np.asarray(image, np.float64) - lo) / (hi - lo), 0, 1)
    return shown[..., 0] if shown.shape[-1] == 1 else shown


def patch_grid_figure(image: np.ndarray, grid: tuple[int, int], patch_size: tuple[int, int], num_prefix: int,
                      title: str = "") -> Figure:
    """The image cut into patches, each labelled with its token index (after `num_prefix` class tokens)."""
    (gh, gw), (ph, pw) = grid, patch_size
    figure = Figure(figsize=(6, 6 * gh * ph / (gw * pw) + 0.6), layout="constrained")
    axis = figure.add_subplot()
    axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1,
                extent=(0, image.shape[1], image.shape[0], 0), interpolation="nearest")
    for r in range(gh + 1):
        axis.axhline(r * ph, color="yellow", linewidth=0.8)
    for c in range(gw + 1):
        axis.axvline(c * pw, color="yellow", linewidth=0.8)
    fontsize = max(4, min(12, 160 // max(gh, gw)))
    for r in range(gh):
        for c in range(gw):
            axis.text((c + 0.5) * pw, (r + 0.5) * ph, str(num_prefix + r * gw + c), color="yellow",
                      fontsize=fontsize, ha="center", va="center",
                      path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    axis.set_xlim(0, gw * pw)
    axis.set_ylim(gh * ph, 0)
    axis.set_xlabel("x (pixels)")
    axis.set_ylabel("y (pixels)")
    prefix = "; token 0 is the class token" if num_prefix else ""
    axis.set_title(title or f"{gh}x{gw} patches of {ph}x{pw} px -> tokens {num_prefix}-{num_prefix + gh * gw - 1}"
                   f"{prefix}")
    return figure


def attention_maps_figure(maps: np.ndarray, query: str, title: str = "") -> Figure:
    """`(layers, heads, gh, gw)` maps: each head's attention from `query` onto the patches, per layer."""
    layers, heads, gh, gw = maps.shape
    figure = Figure(figsize=(max(5.5, 2.2 + 0.9 * heads), max(4.0, 0.9 + 0.9 * layers)), layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(mosaic(maps), cmap=ATTENTION_CMAP, vmin=0, interpolation="nearest")
    _tile_ticks(axis, heads, gw, 1, "x", [str(h + 1) for h in range(heads)])
    _tile_ticks(axis, layers, gh, 1, "y", [str(l + 1) for l in range(layers)])
    axis.set_xlabel("head")
    axis.set_ylabel("layer")
    axis.set_title(title or f"Attention from the {query} onto the patches, per layer and head")
    figure.colorbar(image, ax=axis, label="attention weight")
    return figure


def attention_rollout_figure(image: np.ndarray, rollout_map: np.ndarray, query: str, title: str = "") -> Figure:
    """The image with the rollout map over it, and the map alone with its values."""
    figure = Figure(figsize=(10, 4.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    h, w = image.shape[:2]
    left.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, extent=(0, w, h, 0))
    left.imshow(rollout_map, cmap=ATTENTION_CMAP, alpha=0.55, extent=(0, w, h, 0), interpolation="bilinear")
    left.set_title("image, rollout overlaid")
    values = right.imshow(rollout_map, cmap=ATTENTION_CMAP, vmin=0, extent=(0, w, h, 0), interpolation="nearest")
    right.set_title("rollout per patch")
    for axis in (left, right):
        axis.set_xlabel("x (pixels)")
        axis.set_ylabel("y (pixels)")
    figure.colorbar(values, ax=right, label=f"share of the {query} from each patch")
    figure.suptitle(title or f"Attention rollout (Abnar & Zuidema) from the {query}")
    return figure


def mean_distance_figure(distances: np.ndarray, image_size: tuple[int, int], title: str = "") -> Figure:
    """`(layers, heads)` mean attention distances in pixels, one dot per head, against depth."""
    layers, heads = distances.shape
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axis = figure.add_subplot()
    depth = np.arange(1, layers + 1)
    for head in range(heads):
        axis.scatter(depth, distances[:, head], s=18, label=f"head {head + 1}")
    if heads <= 16:
        axis.legend(fontsize=7, ncols=2 if heads > 8 else 1)
    axis.set_xticks(depth)
    axis.set_ylim(0, float(np.hypot(*image_size)) / 2)
    axis.set_xlabel("network depth (layer)")
    axis.set_ylabel("mean attention distance (pixels)")
    axis.set_title(title or f"Mean attention distance per head ({image_size[0]}x{image_size[1]} px input)")
    return figure


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def rgb_array(figure: Figure, dpi: int = 72) -> np.ndarray:
    """`(H, W, 3)` uint8, for TensorBoard."""
    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
