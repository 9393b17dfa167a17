"""Meshes and partitioning: where parameters, optimizer state and batches live across devices.

`config.mesh` names the axes, e.g. `(("data", -1),)` (all devices data-parallel, the default) or
`(("data", -1), ("model", 2))`; `-1` takes the devices left over. Batches are split over the `data` axis.
Parameters follow `config.sharding_rules`: `(regex over the '/'-joined parameter path, rule)` pairs, the first
match wins (no match: replicated). A rule is
- `replicate`;
- `fsdp`: shard the largest dimension divisible by the `data` axis (tensors of at least `fsdp_min_size`
  elements; never the stacked depth axis of a scanned model);
- `tp`: Megatron-style tensor parallelism over the `model` axis: attention `query/key/value` split by head (their
  output), `out` by head (its input), the MLP's `Dense_0` on its output units and `Dense_1` on its input units, so
  each device computes whole heads and a slice of the hidden units and one reduction per block joins them;
  parameters that are not attention or MLP weights stay replicated;
- `tp_fsdp`: `tp`, then `fsdp` over `data` on a remaining dimension;
- or a tuple of mesh-axis names, one per dimension (a PartitionSpec).
Optimizer state that mirrors a parameter (Adam's moments, momentum) is sharded like it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from vit_jax.param_paths import path_string

DATA_AXIS = "data"
MODEL_AXIS = "model"
FSDP_MIN_SIZE = 2**14
RULE_KINDS = ("replicate", "fsdp", "tp", "tp_fsdp")
# Tensor parallelism: (path regex, the dimension split over `model`, counted from the end so that a scanned
# model's leading depth axis does not shift it).
TENSOR_PARALLEL_DIMS = (
    (re.compile(r"MultiHeadDotProductAttention_\d+/(query|key|value)/(kernel|bias)$"), -2),  # heads
    (re.compile(r"MultiHeadDotProductAttention_\d+/out/kernel$"), -3),  # heads
    (re.compile(r"MlpBlock_\d+/Dense_0/(kernel|bias)$"), -1),  # hidden units
    (re.compile(r"MlpBlock_\d+/Dense_1/kernel$"), -2),  # hidden units
)
SCANNED_PATH = re.compile(r"(^|/)encoderblock/")  # scanned blocks: each parameter stacked over layers on axis 0
Rule = str | tuple[str | None | tuple[str, ...], ...]


class ShardingError(ValueError):
    """A mesh or sharding rule that does not fit the devices or the parameters."""


def mesh_shape(axes: Sequence[tuple[str, int]], num_devices: int) -> dict[str, int]:
    """`(("data", -1), ("model", 2))` on 8 devices -> `{"data": 4, "model": 2}`; a clear error if it cannot fit."""
    if isinstance(axes, str) or not all(isinstance(a, tuple | list) and len(a) == 2 and isinstance(a[0], str)
                                        and isinstance(a[1], int) and not isinstance(a[1], bool) for a in axes):
        raise ShardingError(f"mesh {axes!r} must be (name, size) pairs, e.g. (('data', -1), ('model', 2))")
    names = [name for name, _ in axes]
    if len(set(names)) != len(names) or DATA_AXIS not in names:
        raise ShardingError(f"mesh {tuple(axes)!r} must name each axis once and include a {DATA_AXIS!r} axis")
    sizes = [size for _, size in axes]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ShardingError(f"mesh {tuple(axes)!r}: axis sizes must be positive, with at most one -1 (the rest)")
    fixed = math.prod(s for s in sizes if s != -1)
    if num_devices % fixed or (-1 not in sizes and fixed != num_devices):
        raise ShardingError(f"mesh {tuple(axes)!r} does not fit {num_devices} device(s)")
    return {name: (num_devices // fixed if size == -1 else size) for name, size in axes}


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axis types (XLA propagates shardings between the ones we pin)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(axes, len(devices))
    device_grid = np.asarray(devices).reshape(tuple(shape.values()))
    return Mesh(device_grid, tuple(shape), axis_types=(AxisType.Auto,) * len(shape))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) dimension split over `data`, replicated over every other axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's slice of a batch -> arrays of the global batch, split as `sharding` says (over `data`)."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def host_tree_to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays that every process holds whole (a checkpoint each one read) placed as `shardings` say: each
    process fills its own devices' shards (`jax.device_put` only reaches a process's own devices)."""
    def place(value: Any, sharding: NamedSharding) -> jax.Array:
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: Sequence[int], axis_size: int, min_size: int = FSDP_MIN_SIZE,
              taken: Sequence[str | None] | None = None, skip_dims: Sequence[int] = ()) -> PartitionSpec:
    """Shard the largest free dimension divisible by `axis_size` over `data`; small or indivisible tensors stay as
    they are. `taken`: entries already assigned (e.g. by tensor parallelism); `skip_dims`: dimensions never split."""
    entries = list(taken) if taken is not None else [None] * len(shape)
    if axis_size > 1 and math.prod(shape) >= min_size:
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if entries[dim] is None and dim not in skip_dims and shape[dim] % axis_size == 0:
                entries[dim] = DATA_AXIS
                break
    return _spec(entries)


def _spec(entries: Sequence[str | None]) -> PartitionSpec:
    """A PartitionSpec without trailing `None`s (`P('data', None)` and `P('data')` mean the same)."""
    entries = list(entries)
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def tensor_parallel_entries(path: str, shape: Sequence[int], mesh: Mesh) -> list[str | None]:
    """`model` on the dimension tensor parallelism splits for this parameter (none for other parameters)."""
    entries: list[str | None] = [None] * len(shape)
    for pattern, dim in TENSOR_PARALLEL_DIMS:
        if pattern.search(path):
            size = mesh.shape.get(MODEL_AXIS, 1)
            if MODEL_AXIS not in mesh.shape:
                raise ShardingError(f"rule 'tp' for {path} needs a {MODEL_AXIS!r} mesh axis; mesh {dict(mesh.shape)}")
            if shape[dim] % size:
                raise ShardingError(
                    f"{path}: dimension {len(shape) + dim} of shape {tuple(shape)} (heads or hidden units) is not "
                    f"divisible by the {MODEL_AXIS!r} axis size {size}")
            entries[dim] = MODEL_AXIS
            break
    return entries


def spec_for(path: str, shape: Sequence[int], rules: Sequence[tuple[str, Rule]], mesh: Mesh,
             fsdp_min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """The PartitionSpec of the first rule whose regex matches `path` (`re.search`); replicated if none does."""
    skip = (0,) if SCANNED_PATH.search(path) else ()
    data_size = mesh.shape[DATA_AXIS]
    for pattern, rule in rules:
        if not re.search(pattern, path):
            continue
        if rule == "replicate":
            return PartitionSpec()
        if rule == "fsdp":
            return fsdp_spec(shape, data_size, fsdp_min_size, skip_dims=skip)
        if rule == "tp":
            return _spec(tensor_parallel_entries(path, shape, mesh))
        if rule == "tp_fsdp":
            return fsdp_spec(shape, data_size, fsdp_min_size, tensor_parallel_entries(path, shape, mesh), skip)
        if isinstance(rule, str):
            raise ShardingError(f"sharding rule {rule!r} for {pattern!r} is not one of {RULE_KINDS} or a tuple of axes")
        spec = PartitionSpec(*rule)
        check_spec(path, shape, spec, mesh)
        return spec
    return PartitionSpec()


def check_spec(path: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> None:
    if len(spec) > len(shape):
        raise ShardingError(f"{path}: PartitionSpec {spec} has more entries than the shape {tuple(shape)}")
    for dim, axes in enumerate(spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        unknown = [a for a in names if a not in mesh.shape]
        if unknown:
            raise ShardingError(f"{path}: PartitionSpec {spec} names mesh axes {unknown}; the mesh has {dict(mesh.shape)}")
        size = math.prod(mesh.shape[a] for a in names)
        if shape[dim] % size:
            raise ShardingError(f"{path}: dimension {dim} of shape {tuple(shape)} is not divisible by {size} ({spec})")


def tree_shardings(tree: Any, rules: Sequence[tuple[str, Rule]], mesh: Mesh,
                   fsdp_min_size: int = FSDP_MIN_SIZE) -> Any:
    """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs), by the leaf's path."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec_for(path_string(path), np.shape(leaf), rules, mesh,
                                                        fsdp_min_size)), tree
    )


def mirrored_shardings(tree: Any, params_shardings: Any, params: Any, mesh: Mesh) -> Any:
    """Shardings for a tree whose leaves may mirror parameters (optimizer state): a leaf whose path holds a
    parameter's path (optax's `mu/<param>`, or per-parameter states such as Adafactor's `<param>/v`) and has its
    shape gets that parameter's sharding; anything else is replicated."""
    by_path = {}
    for (path, sharding), leaf in zip(jax.tree_util.tree_leaves_with_path(params_shardings),
                                      jax.tree.leaves(params), strict=True):
        by_path[path_string(path)] = (sharding, np.shape(leaf))

    def sharding_of(path: Sequence[Any], leaf: Any) -> NamedSharding:
        parts = path_string(path).split("/")
        for start in range(len(parts)):
            for end in range(len(parts), start, -1):
                match = by_path.get("/".join(parts[start:end]))
                if match and match[1] == np.shape(leaf):
                    return match[0]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(sharding_of, tree)
