"""Parameter paths as '/'-joined names (`Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel`).

Checkpoints, sharding rules and weight-decay masks all name parameters this way, so one regex means the same
tensors everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def path_string(path: Sequence[Any]) -> str:
    """A pytree key path (from `jax.tree_util.tree_map_with_path`) as a '/'-joined string."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return "/".join(parts)
