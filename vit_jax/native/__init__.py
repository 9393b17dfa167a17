"""vit_jax's native XLA FFI custom calls for the CPU (`gemm.cc`), built by `pip install -e .` where a C++ compiler
is at hand. Everything that uses them falls back to plain XLA where the extension is missing or the backend is not
the CPU (`extension()` is None then)."""

from __future__ import annotations

import ctypes
import functools
import importlib.util

import jax
import numpy as np

TRANSPOSE = "vit_jax_transpose"


@functools.cache
def extension() -> ctypes.CDLL | None:
    """The loaded extension with its custom calls registered, or None (not built, or not on the CPU)."""
    if jax.default_backend() != "cpu":
        return None
    spec = importlib.util.find_spec("vit_jax.native._gemm")
    if spec is None or spec.origin is None:
        return None
    library = ctypes.CDLL(spec.origin)
    jax.ffi.register_ffi_target(TRANSPOSE, jax.ffi.pycapsule(library.VitJaxTranspose), platform="cpu")
    return library


def transpose(x: jax.Array) -> jax.Array:
    """`x.T` of a 2-D array of 2- or 4-byte elements, computed where XLA cannot fold it into the next product
    (`extension()` must not be None)."""
    if extension() is None or x.ndim != 2 or np.dtype(x.dtype).itemsize not in (2, 4):
        raise ValueError(f"native transpose: needs the extension and a 2-D array of 2- or 4-byte elements; got "
                         f"{x.shape} {x.dtype}")
    return jax.ffi.ffi_call(TRANSPOSE, jax.ShapeDtypeStruct(x.shape[::-1], x.dtype))(x)


def available() -> bool:
    return extension() is not None


__all__ = ["TRANSPOSE", "available", "extension", "transpose"]
