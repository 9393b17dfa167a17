"""Builds vit_jax's one native piece, the XLA FFI matrix product (vit_jax/native/gemm.cc), during `pip install`.

Optional: where it cannot be built (no C++ compiler), vit_jax installs without it and `model.matmul='blas'` falls
back to XLA's own products. Everything else is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vit_jax.native._gemm",
            sources=["vit_jax/native/gemm.cc", "vit_jax/native/onednn_matmul.cc"],
            include_dirs=["vit_jax/native/include"],  # XLA's FFI and oneDNN 3.2's C API headers (both Apache-2.0)
            extra_compile_args=["-std=c++17", "-O3"],
            libraries=["dl"],  # oneDNN is opened at run time
            language="c++",
            optional=True,
        )
    ]
)
