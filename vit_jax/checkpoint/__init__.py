"""Checkpoints: orbax for training state (`manager`)."""

from vit_jax.checkpoint.manager import TrainCheckpoints

__all__ = ["TrainCheckpoints"]
