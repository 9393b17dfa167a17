"""`python -m vit_jax.benchmark`: training and inference speed of vit_jax (and, with `--vs-timm`, timm) on the
hardware at hand. See `vit_jax.benchmark.__main__` for the options and BENCHMARKS.md for figures."""
