"""Two-operand einsums as oneDNN matrix products (`onednn_matmul.cc`), the CPU's fast bf16 path; and, for
inference, oneDNN's LayerNorm and a fused attention, which leave XLA no passes of its own around the products.

XLA:CPU's bf16 products run at about half of what oneDNN's AVX512-BF16 (and AMX) kernels reach on ViT's shapes, and
its batched attention products at a quarter (BENCHMARKS.md, experiment 19). oneDNN comes from the
`onednn-cpu-gomp` wheel (a dependency on x86-64 Linux); the extension opens it at run time, so where either is
missing, on another backend, or over several devices (a custom call is not partitioned over a mesh) each function
here returns None and the caller keeps XLA's computation.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import native
from vit_jax.einsum_spec import EinsumSpec

MATMUL = "vit_jax_matmul"  # activation(scale * product + bias) + residual, all in the product's pass
SOFTMAX = "vit_jax_softmax"
LAYER_NORM = "vit_jax_layer_norm"
ATTENTION = "vit_jax_attention"  # softmax(scale Q K^T) V, a block of query rows' logits in cache at a time
DISTRIBUTION = "onednn-cpu-gomp"
SWITCH = "VIT_JAX_ONEDNN"  # "0": keep XLA's products


def library_path() -> str | None:
    """libdnnl.so.3 as the `onednn-cpu-gomp` wheel installed it, or None."""
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in files if f.name.startswith("libdnnl.so")]
    found.sort(key=lambda f: len(f.name))  # libdnnl.so before its versioned names: any of them is the library
    return str(found[0].locate()) if found else None


def installed() -> bool:
    """Whether the extension and oneDNN are installed and not switched off (`VIT_JAX_ONEDNN=0`); asks nothing of
    JAX, so XLA's flags can be chosen by it before the backend starts."""
    return (os.environ.get(SWITCH, "1") != "0" and importlib.util.find_spec("vit_jax.native._gemm") is not None
            and library_path() is not None)


@functools.cache
def _opened() -> ctypes.CDLL | None:
    """The extension with oneDNN opened in it, or None; asks nothing of JAX (no backend started), so that XLA's
    flags can depend on oneDNN's kernels."""
    spec = importlib.util.find_spec("vit_jax.native._gemm")
    path = library_path()
    if not installed() or spec is None or spec.origin is None or path is None:
        return None
    library = ctypes.CDLL(spec.origin)
    if not library.vit_jax_load_onednn(ctypes.c_char_p(path.encode())):
        logging.warning("oneDNN at %s did not load (its OpenMP runtime, libgomp, missing?): XLA's products are "
                        "used", path)
        return None
    return library


@functools.cache
def loaded() -> bool:
    """Whether products go to oneDNN in this process (its custom call registered; the CPU backend)."""
    library = _opened()
    if native.extension() is None or library is None:
        return False
    jax.ffi.register_ffi_target(MATMUL, jax.ffi.pycapsule(library.VitJaxMatmul), platform="cpu")
    jax.ffi.register_ffi_target(SOFTMAX, jax.ffi.pycapsule(library.VitJaxSoftmax), platform="cpu")
    jax.ffi.register_ffi_target(ATTENTION, jax.ffi.pycapsule(library.VitJaxAttention), platform="cpu")
    jax.ffi.register_ffi_target(LAYER_NORM, jax.ffi.pycapsule(library.VitJaxLayerNorm), platform="cpu")
    return True


_switched_off = threading.local()


@contextlib.contextmanager
def xla_products() -> Iterator[None]:
    """Functions traced inside use XLA's products (to count FLOPs: XLA's cost analysis sees none in a custom
    call; or to compare the two)."""
    previous = getattr(_switched_off, "value", False)
    _switched_off.value = True
    try:
        yield
    finally:
        _switched_off.value = previous


def usable() -> bool:
    """oneDNN is loaded and this process computes on one CPU device (a mesh of several keeps XLA's products), and
    no `xla_products()` is in force."""
    return not getattr(_switched_off, "value", False) and loaded() and jax.device_count() == 1


_DNNL_TYPES = {"bfloat16": 2, "float32": 3}  # oneDNN's dnnl_data_type_t
# the activations oneDNN applies after the bias (onednn_matmul.cc's codes; `vit_jax.models.activations` names them)
ACTIVATIONS = {None: 0, "gelu_erf": 1, "gelu_tanh": 2, "quick_gelu": 3, "silu": 4}
_FAST = ("brg", "gemm:jit", "jit")  # kernel names oneDNN gives its optimised implementations
# bf16 products: brgemm only, the kernels of processors with bf16 instructions (AVX512-BF16, AMX). Without them
# oneDNN emulates bf16 in `gemm:jit:bf16` at a third of its float32 speed (6304x192x768: 71 vs 213 GFLOP/s with
# ONEDNN_MAX_CPU_ISA=AVX512_CORE, BENCHMARKS.md), slower than XLA's products, which convert to float32.
_FAST_BF16 = ("brg",)
_MATMUL, _SOFTMAX, _LAYER_NORM = 0, 1, 2  # the primitive kinds of onednn_matmul.cc's keys


@functools.lru_cache(maxsize=4096)
def kernel(key: tuple[int, ...]) -> str:
    """The name of oneDNN's kernel for a primitive (its kind, then dims, strides, types... as the custom call
    makes them: onednn_matmul.cc), "" for none (or no oneDNN); asked at trace time."""
    library = _opened()
    if library is None:
        return ""
    name = ctypes.create_string_buffer(256)
    found = library.vit_jax_onednn_kernel((ctypes.c_int64 * len(key))(*key), len(key), name, len(name))
    return name.value.decode() if found else ""


def _fast_product(key: tuple[int, ...]) -> bool:
    """Whether oneDNN runs the product `key` (`_matmul_key`'s) with an optimised kernel, for bf16 operands a
    brgemm one (`_FAST_BF16`)."""
    operands = key[18:20]  # the types of A and B
    return kernel(key).startswith(_FAST_BF16 if _DNNL_TYPES["bfloat16"] in operands else _FAST)


@functools.cache
def bf16_products() -> bool:
    """Whether oneDNN computes bf16 products on this processor (brgemm kernels: bf16 instructions); asks nothing
    of JAX. Where it does not, bf16 products stay XLA's, and XLA keeps its YNNPACK fusions for them
    (`vit_jax.xla_flags`)."""
    return _fast_product(_dense_key(64, 64, 64, "bfloat16"))


def _matmul_key(dims: list[int], a_strides: list[int], b_strides: list[int], c_strides: list[int],
                types: Sequence[Any], bias_type: Any, activation: str | None, scale: float,
                residual_type: Any = None) -> tuple[int, ...]:
    """A product's key as onednn_matmul.cc makes it: dims `(b1, b2, m, k, n)`, four strides per operand, the types
    of A, B and C, the bias type (None: no bias), the activation, the scale's float bits, the residual's type
    (None: none)."""
    types = [_DNNL_TYPES[jnp.dtype(t).name] for t in types]
    type_or_none = lambda t: 0 if t is None else _DNNL_TYPES[jnp.dtype(t).name]
    epilogue = [type_or_none(bias_type), ACTIVATIONS[activation], int(np.float32(scale).view(np.int32)),
                type_or_none(residual_type)]
    return tuple([_MATMUL] + dims + a_strides + b_strides + c_strides + types + epilogue)


def dense_kernel(rows: int, k: int, n: int, dtype: Any) -> str | None:
    """The kernel oneDNN runs for a dense layer's product `(rows, k) @ (k, n)` in `dtype` (bf16: float32
    accumulation), e.g. `brg:avx512_core_bf16`, or `brg:avx512_core_amx` on a processor with AMX; None where
    vit_jax's products are not oneDNN's. Benchmarks record it beside their figures."""
    if not usable():
        return None
    key = _dense_key(rows, k, n, dtype)
    return kernel(key) if _fast_product(key) else None


def _dense_key(rows: int, k: int, n: int, dtype: Any) -> tuple[int, ...]:
    """The key of a plain `(rows, k) @ (k, n)` product in `dtype`, all three row-major."""
    strides = [_strides([1, 1, *shape]) for shape in ((rows, k), (k, n), (rows, n))]
    return _matmul_key([1, 1, rows, k, n], *strides, (dtype, dtype, dtype), None, None, 1.0)


def _strides(shape: Sequence[int]) -> list[int]:
    return [math.prod(shape[i + 1:]) for i in range(len(shape))]


def _group(indices: list[str], strides: list[dict[str, int]], sizes: dict[str, int]
           ) -> tuple[int, list[int]] | None:
    """`indices` as one matrix dimension: its size and its stride in each operand (of those that hold all of
    them), or None when they are not evenly spaced in some operand (then they cannot be one dimension)."""
    if not indices:
        return 1, [0] * len(strides)
    for outer, inner in zip(indices, indices[1:]):
        for operand in strides:
            if operand.get(outer, 0) != sizes[inner] * operand.get(inner, 0):
                return None
    return math.prod(sizes[i] for i in indices), [operand.get(indices[-1], 0) for operand in strides]


def einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype: jnp.dtype, swapped: bool = False,
           bias: jax.Array | None = None, activation: str | None = None, scale: float = 1.0,
           residual: jax.Array | None = None) -> jax.Array | None:
    """`scale * jnp.einsum(spec, a, b)` accumulated in float32 and written as `out_dtype`, by oneDNN, reading both
    operands and writing the result in place whatever their layouts; None where that is not possible (see the
    module docstring, or index groups that are not evenly strided, or more than two batch groups). With `bias`
    (over the result's columns: the indices of `b` alone, flattened) and `activation` (a name in `ACTIVATIONS`),
    `activation(product + bias)`; plus `residual` (the result's shape), that sum plus the residual. The scale, the
    bias, the activation and the residual are applied to the float32 accumulator before the result is written (a
    scale with a bias is refused: oneDNN would scale the sum)."""
    types = [a.dtype, out_dtype] + [x.dtype for x in (bias, residual) if x is not None]
    if not usable() or a.dtype != b.dtype or any(jnp.dtype(t).name not in _DNNL_TYPES for t in types):
        return None
    if activation not in ACTIVATIONS or (activation is not None and bias is None):
        raise ValueError(f"activation must be one of {sorted(k for k in ACTIVATIONS if k)} with a bias, or None; "
                         f"got {activation!r}" + ("" if bias is not None else " without a bias"))
    if scale != 1.0 and bias is not None:
        raise ValueError(f"a scale ({scale}) is applied to products without a bias; got a bias of shape {bias.shape}")
    parsed = EinsumSpec.parse(spec)
    a_spec, b_spec, out = parsed.a, parsed.b, parsed.out
    sizes = {**dict(zip(a_spec, a.shape)), **dict(zip(b_spec, b.shape))}
    out_shape = tuple(sizes[i] for i in out)
    if min((*a.shape, *b.shape, 1)) == 0 or any(spec.count(i) > 1 for spec in (a_spec, b_spec, out) for i in spec):
        return None
    if residual is not None and residual.shape != out_shape:
        raise ValueError(f"the residual must have the product's shape {out_shape}; got {residual.shape}")
    strides = [dict(zip(s, _strides(x.shape))) for s, x in ((a_spec, a), (b_spec, b))]
    strides.append(dict(zip(out, _strides(out_shape))))
    batch, contracted = parsed.batch, parsed.contracted
    rows = [i for i in out if i in a_spec and i not in b_spec]
    columns = [i for i in out if i in b_spec and i not in a_spec]
    if any(i not in out and i not in contracted for i in a_spec + b_spec):
        return None  # an index summed inside one operand
    batch_groups: list[list[str]] = []
    for index in batch:  # consecutive batch indices merge where they can; at most two groups
        merged = batch_groups[-1] + [index] if batch_groups else None
        if merged is not None and _group(merged, strides, sizes) is not None:
            batch_groups[-1] = merged
        else:
            batch_groups.append([index])
    groups = [_group(g, strides, sizes) for g in ([[]] * (2 - len(batch_groups)) + batch_groups)]
    groups += [_group(rows, strides, sizes), _group(contracted, strides, sizes), _group(columns, strides, sizes)]
    if len(batch_groups) > 2 or any(g is None for g in groups):
        return None
    (b1, s1), (b2, s2), (m, sm), (k, sk), (n, sn) = groups  # type: ignore[misc]
    if bias is not None and (bias.size != n or sn[2] != 1):
        return None  # the bias runs along the result's contiguous columns only
    if n > 1 and sn[2] != 1:  # oneDNN writes a transposed result slowly (a reference kernel): C^T = B^T A^T
        return None if swapped else einsum(f"{b_spec},{a_spec}->{out}", b, a, out_dtype, swapped=True, scale=scale,
                                           residual=residual)
    a_strides = [s1[0], s2[0], sm[0], sk[0]]
    b_strides = [s1[1], s2[1], sk[1], sn[1]]
    c_strides = [s1[2], s2[2], sm[2], sn[2]]
    dims = [b1, b2, m, k, n]
    scale = float(np.float32(scale))
    key = _matmul_key(dims, a_strides, b_strides, c_strides, (a.dtype, b.dtype, out_dtype),
                      None if bias is None else bias.dtype, activation, scale,
                      None if residual is None else residual.dtype)
    if not _fast_product(key):
        return None  # no kernel, or only a reference one (or emulated bf16): XLA's product is faster
    as_attr = lambda values: np.asarray(values, np.int64)
    bias = jnp.zeros((0,), a.dtype) if bias is None else bias.reshape(-1)  # empty: none
    residual = jnp.zeros((0,), a.dtype) if residual is None else residual
    call = jax.ffi.ffi_call(MATMUL, jax.ShapeDtypeStruct(out_shape, out_dtype), vmap_method="sequential")
    return call(a, b, bias, residual, dims=as_attr(dims), a_strides=as_attr(a_strides), b_strides=as_attr(b_strides),
                c_strides=as_attr(c_strides), activation=np.int64(ACTIVATIONS[activation]), scale=np.float32(scale))


def softmax(x: jax.Array, out_dtype: jnp.dtype) -> jax.Array | None:
    """Softmax over the last axis by oneDNN (one pass over each row, float32 inside, written as `out_dtype`);
    None where oneDNN is not in use or has no optimised kernel for it."""
    types = [jnp.dtype(t).name for t in (x.dtype, out_dtype)]
    if not usable() or x.ndim == 0 or x.size == 0 or any(t not in _DNNL_TYPES for t in types):
        return None
    n = x.shape[-1]
    key = (_SOFTMAX, x.size // n, n, _DNNL_TYPES[types[0]], _DNNL_TYPES["float32"])  # float32 out, then rounded
    if not kernel(key).startswith(_FAST):
        return None
    return jax.ffi.ffi_call(SOFTMAX, jax.ShapeDtypeStruct(x.shape, out_dtype), vmap_method="sequential")(x)


def layer_norm(x: jax.Array, scale: jax.Array, shift: jax.Array, epsilon: float, out_dtype: Any
               ) -> jax.Array | None:
    """`(x - mean) / sqrt(var + epsilon) * scale + shift` over the last axis by oneDNN (statistics in float32, one
    rounding to `out_dtype`), for inference; None where oneDNN is not in use or has no optimised kernel for it."""
    types = [jnp.dtype(t).name for t in (x.dtype, out_dtype)]
    n = x.shape[-1] if x.ndim else 0
    if (not usable() or n == 0 or x.size == 0 or any(t not in _DNNL_TYPES for t in types)
            or scale.shape != (n,) or shift.shape != (n,)):
        return None
    epsilon = float(np.float32(epsilon))
    key = (_LAYER_NORM, x.size // n, n, *(_DNNL_TYPES[t] for t in types), int(np.float32(epsilon).view(np.int32)))
    if not kernel(key).startswith(_FAST):
        return None
    call = jax.ffi.ffi_call(LAYER_NORM, jax.ShapeDtypeStruct(x.shape, out_dtype), vmap_method="sequential")
    return call(x, scale.astype(jnp.float32), shift.astype(jnp.float32), epsilon=np.float32(epsilon))


@functools.cache
def _attention_rows(n: int, heads: int, m: int) -> int:
    """The query rows `vit_jax_attention` takes per pass (onednn_matmul.cc's `AttentionRows`)."""
    rows = native.extension().vit_jax_attention_rows
    rows.argtypes, rows.restype = [ctypes.c_int64] * 3, ctypes.c_int64
    return rows(n, heads, m)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, scale: float) -> jax.Array | None:
    """`softmax(scale * query key^T) value` over `(B, N, H, d)` queries, `(B, M, H, d)` keys and `(B, M, H, e)`
    values (flax's layout), in one call: each (batch, head) pair's float32 logits and weights stay in a
    cache-resident buffer, computed by the same primitives as `einsum` and `softmax` apart (logits scaled on the
    float32 accumulator, the weights rounded once to the values' dtype, the result written in it). None where
    oneDNN is not in use or lacks an optimised kernel for one of the three."""
    dtype = jnp.dtype(value.dtype)
    if (not usable() or dtype.name not in _DNNL_TYPES or query.dtype != dtype or key.dtype != dtype
            or query.ndim != 4 or key.ndim != 4 or value.ndim != 4 or min(*query.shape, *key.shape, *value.shape) == 0):
        return None
    (batch, n, heads, d), (_, m, _, e) = query.shape, value.shape
    if key.shape != (batch, m, heads, d) or value.shape[:3] != (batch, m, heads):
        return None
    scale = float(np.float32(scale))
    block = _attention_rows(n, heads, m)
    for rows in {block, n % block or block}:
        logits = _matmul_key([1, heads, rows, d, m], [0, d, heads * d, 1], [0, d, 1, heads * d], [0, rows * m, m, 1],
                             (dtype, dtype, jnp.float32), None, None, scale)
        weights = (_SOFTMAX, heads * rows, m, _DNNL_TYPES["float32"], _DNNL_TYPES["float32"])
        values = _matmul_key([1, heads, rows, m, e], [0, rows * m, m, 1], [0, e, heads * e, 1], [0, e, heads * e, 1],
                             (dtype, dtype, dtype), None, None, 1.0)
        if not (_fast_product(logits) and kernel(weights).startswith(_FAST) and _fast_product(values)):
            return None
    call = jax.ffi.ffi_call(ATTENTION, jax.ShapeDtypeStruct((batch, n, heads, e), dtype), vmap_method="sequential")
    return call(query, key, value, scale=np.float32(scale))
