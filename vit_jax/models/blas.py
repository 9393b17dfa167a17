"""Dense-layer products through a library GEMM: an XLA FFI custom call (`vit_jax/native/gemm.cc`) to the OpenBLAS
numpy ships, forward and backward.

XLA:CPU's own float32 products are fast on square matrices but uneven on a ViT's shapes: on a Zen 4, 82-213
GFLOP/s for the products of a ViT-Ti/16 step against ~200 for OpenBLAS on every one of them (BENCHMARKS.md).
`blas_dot_general` takes a dense layer's contraction (trailing input axes with leading kernel axes) in float32 to
one `sgemm`, and its gradients to two more (`g B^T`, `A^T g`); anything else, or where the library is missing
(the extension did not build, numpy without its bundled OpenBLAS) or the backend is not the CPU, goes to
`lax.dot_general` unchanged. For one device: a custom call is not partitioned across a mesh.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vit_jax import native
from vit_jax.models.mixed_precision import contracted_trailing_axes, is_bfloat16, mixed_dot_general
from vit_jax.models.primitives import define_primitive
from vit_jax.native import onednn

TARGET = "vit_jax_sgemm"


def _numpy_openblas() -> tuple[ctypes.CDLL, str] | None:
    """numpy's bundled OpenBLAS (64-bit integers) and its sgemm's symbol, if this numpy has one."""
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libs.glob("libscipy_openblas64_*.so*")):
        library = ctypes.CDLL(str(path))
        if hasattr(library, "scipy_cblas_sgemm64_"):
            return library, "scipy_cblas_sgemm64_"
    return None


@functools.cache
def available() -> bool:
    """Whether the custom call is registered: extension built, a BLAS found, a CPU backend."""
    extension = native.extension()
    blas = _numpy_openblas()
    if extension is None or blas is None:
        if jax.default_backend() == "cpu":
            logging.warning("model.matmul='blas': %s; using XLA's products", "the native extension was not built"
                            if extension is None else "numpy has no bundled OpenBLAS")
        return False
    library, symbol = blas
    set_threads_local = getattr(library, "openblas_set_num_threads_local", None)  # each XLA thread runs one
    extension.vit_jax_set_sgemm(ctypes.cast(getattr(library, symbol), ctypes.c_void_p), ctypes.c_int(1),
                                ctypes.cast(set_threads_local, ctypes.c_void_p) if set_threads_local else None)
    available.library = library  # kept alive with the function pointer handed over
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(extension.VitJaxSgemm), platform="cpu")
    return True


def sgemm(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
    """`op(a) @ op(b)` for 2-D float32 arrays through the library."""
    if not available():
        raise RuntimeError("vit_jax's BLAS product is not available here (see vit_jax.models.blas.available)")
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32))
    return call(a, b, trans_a=np.int32(trans_a), trans_b=np.int32(trans_b))


def blas_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` (2-D, float32) with both gradients through the library too: a bilinear JAX primitive (as
    `lax.dot_general`) whose derivatives are library products with transposed operands, so forward mode, second
    order and `vmap` work as well as reverse mode."""
    return _sgemm_p.bind(a, b, trans_a=False, trans_b=False)


def _sgemm_shape(a: Any, b: Any, *, trans_a: bool, trans_b: bool) -> jax.core.ShapedArray:
    (m, k), (k_b, n) = a.shape[::-1] if trans_a else a.shape, b.shape[::-1] if trans_b else b.shape
    if k != k_b:
        raise ValueError(f"sgemm: op(a) {(m, k)} and op(b) {(k_b, n)} do not chain (trans_a={trans_a}, "
                         f"trans_b={trans_b})")
    return jax.core.ShapedArray((m, n), jnp.float32)


def _sgemm_lowered(a: jax.Array, b: jax.Array, *, trans_a: bool, trans_b: bool) -> jax.Array:
    return sgemm(a, b, trans_a, trans_b)


def _sgemm_transpose_lhs(g: jax.Array, a: Any, b: jax.Array, *, trans_a: bool, trans_b: bool) -> jax.Array:
    # C = op(A) op(B): op(A)'s cotangent is G op(B)^T; A's, its transpose where A comes transposed
    if not trans_a:
        return _sgemm_p.bind(g, b, trans_a=False, trans_b=not trans_b)
    return _sgemm_p.bind(b, g, trans_a=trans_b, trans_b=True)


def _sgemm_transpose_rhs(g: jax.Array, a: jax.Array, b: Any, *, trans_a: bool, trans_b: bool) -> jax.Array:
    # op(B)'s cotangent is op(A)^T G
    if not trans_b:
        return _sgemm_p.bind(a, g, trans_a=not trans_a, trans_b=False)
    return _sgemm_p.bind(g, a, trans_a=True, trans_b=trans_a)


def _sgemm_batched(args: tuple[jax.Array, jax.Array], dims: tuple[int | None, int | None], **params: bool
                   ) -> tuple[jax.Array, int]:
    """`vmap`: one product per mapped element (`lax.map`), the unmapped operand shared."""
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    a, b = (jnp.broadcast_to(x, (size, *x.shape)) if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims))
    return lax.map(lambda ab: _sgemm_p.bind(*ab, **params), (a, b)), 0


_sgemm_p = define_primitive("vit_jax_blas_sgemm", _sgemm_lowered, _sgemm_shape, _sgemm_batched,
                            transposes=(_sgemm_transpose_lhs, _sgemm_transpose_rhs))


def blas_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any = None,
                     preferred_element_type: Any = None, **kwargs: Any) -> jax.Array:
    """A drop-in `dot_general` for flax's dense layers (see the module docstring)."""
    k = contracted_trailing_axes(lhs, rhs, dimension_numbers)
    if (k == 0 or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32
            or preferred_element_type not in (None, jnp.float32) or not available()):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kwargs)
    batch_shape, size = lhs.shape[: lhs.ndim - k], int(np.prod(lhs.shape[lhs.ndim - k:]))
    out = blas_matmul(lhs.reshape(-1, size), rhs.reshape(size, -1))
    return out.reshape(*batch_shape, *rhs.shape[k:])


MATMUL_IMPLS = ("xla", "blas")


def check_matmul(matmul: str, dtype: Any) -> None:
    """`model.matmul` is one of `MATMUL_IMPLS`; `blas` computes in float32 (bf16 layers have their own products)."""
    if matmul not in MATMUL_IMPLS:
        raise ValueError(f"matmul must be one of {MATMUL_IMPLS}; got {matmul!r}")
    if matmul == "blas" and dtype is not None and jnp.dtype(dtype) != jnp.float32:
        raise ValueError(f"matmul='blas' is float32 (OpenBLAS's sgemm); got dtype={jnp.dtype(dtype).name}: bf16 "
                         f"layers use vit_jax.models.mixed_precision's products, leave matmul='xla'")


def dense_dot_general(dtype: Any, matmul: str) -> Any:
    """The `dot_general` of a dense layer: bf16 products with float32 accumulation for bf16 layers, the library
    GEMM for `matmul='blas'`; otherwise oneDNN's where it is in use (`vit_jax.native.onednn`, through
    `mixed_dot_general`, which takes float32 there too), else XLA's."""
    if is_bfloat16(dtype) or (matmul == "xla" and onednn.usable()):
        return mixed_dot_general
    return blas_dot_general if matmul == "blas" else lax.dot_general
