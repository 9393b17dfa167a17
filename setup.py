"""Builds vit_jax's one native piece, the XLA FFI matrix product (vit_jax/native/gemm.cc), during `pip install`.

Optional: where it cannot be built (no C++ compiler), vit_jax installs without it and `model.matmul='blas'` falls
back to XLA's own products. Everything else is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vit_jax.native._gemm",
            sources=["vit_jax/native/gemm.cc"],
            include_dirs=["vit_jax/native/include"],  # XLA's FFI headers (Apache-2.0), as jaxlib ships them
            extra_compile_args=["-std=c++17", "-O3"],
            language="c++",
            optional=True,
        )
    ]
)
