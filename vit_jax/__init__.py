"""vit_jax: Vision Transformers in JAX/Flax, built around turning an image into tokens."""

__version__ = "0.1.0"
