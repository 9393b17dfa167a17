"""Shared fixtures: small models and parameters with no zero-initialised leaves (so nothing hides behind a 0)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest


def perturbed(params: Any, seed: int = 0, scale: float = 0.2) -> Any:
    """`params` plus Gaussian noise on every leaf: zero-initialised heads, biases and class tokens come alive."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    noisy = [np.asarray(leaf) + scale * rng.standard_normal(np.shape(leaf)).astype(np.float32) for leaf in leaves]
    return jax.tree.unflatten(treedef, noisy)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
