"""How alike the learned position embeddings of two patch positions are (ViT paper, Figure 7 centre)."""

from __future__ import annotations

import numpy as np


def patch_rows(table: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The `(gh * gw, D)` patch rows of a `(1, prefix + gh * gw, D)` or `(prefix + gh * gw, D)` table: prefix
    (class-token) rows are the leading ones and are dropped."""
    table = np.asarray(table, np.float64).reshape(-1, np.shape(table)[-1])
    gh, gw = grid
    if table.shape[0] < gh * gw:
        raise ValueError(f"position table has {table.shape[0]} rows; a {gh}x{gw} grid needs at least {gh * gw}")
    return table[table.shape[0] - gh * gw:]


def posemb_similarity(table: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """`sim[i, j, k, l]`: cosine similarity between the embedding of the patch at row i, column j and that of the
    patch at row k, column l; shape `(gh, gw, gh, gw)`."""
    rows = patch_rows(table, grid)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    unit = rows / np.maximum(norms, 1e-12)
    gh, gw = grid
    return (unit @ unit.T).reshape(gh, gw, gh, gw)
