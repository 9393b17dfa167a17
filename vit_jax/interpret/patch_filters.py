"""Principal components of the patch-embedding filters (ViT paper, Figure 7 left).

The kernel `(ph, pw, C, D)` holds D filters, each a `ph x pw x C` image. Treating the D filters as samples, their
principal components are the image patterns the embedding is most sensitive to, in order of variance explained.
"""

from __future__ import annotations

import numpy as np


def principal_filters(kernel: np.ndarray, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` principal components of the filters as `(count, ph, pw, C)` images, and the fraction of
    the filters' variance each explains. Each component's sign is chosen so that its largest-magnitude entry is
    positive (a component's sign is arbitrary; this makes pictures reproducible)."""
    kernel = np.asarray(kernel, np.float64)
    ph, pw, c, d = kernel.shape
    filters = kernel.reshape(ph * pw * c, d).T  # (D samples, P features)
    centred = filters - filters.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    count = components.shape[0] if count is None else min(count, components.shape[0])
    components = components[:count]
    largest = np.abs(components).argmax(axis=1)
    components = components * np.sign(components[np.arange(count), largest])[:, None]
    variance = singular**2
    explained = variance[:count] / max(variance.sum(), 1e-300)
    return components.reshape(count, ph, pw, c), explained
