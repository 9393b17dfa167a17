"""Sharding constraints on activations, so that XLA keeps them split the way the parameters are.

With data parallelism the tokens `(B, N, D)` stay split over the batch; with tensor parallelism the MLP's hidden
units `(B, N, mlp)` are split over the `model` axis between `Dense_0` and `Dense_1`, so XLA does not gather
the hidden activations that only one device needs. Without an `ActivationSharding` (one device) nothing changes.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    """Where activations live: the batch over `data_axis`, heads and hidden units over `model_axis` (if any)."""

    mesh: Mesh
    data_axis: str = "data"
    model_axis: str | None = None

    def tokens(self, x: jax.Array) -> jax.Array:
        """`(B, N, D)`: split by example, whole across the model axis (every device needs all of D)."""
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(self.data_axis)))

    def hidden(self, x: jax.Array) -> jax.Array:
        """`(B, N, mlp)`: split by example and, with tensor parallelism, by hidden unit."""
        spec = PartitionSpec(self.data_axis, None, self.model_axis)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def constrain_tokens(x: jax.Array, sharding: ActivationSharding | None) -> jax.Array:
    return x if sharding is None else sharding.tokens(x)


def constrain_hidden(x: jax.Array, sharding: ActivationSharding | None) -> jax.Array:
    return x if sharding is None else sharding.hidden(x)
