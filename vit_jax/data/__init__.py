"""Data: TFDS datasets read without TensorFlow (ArrayRecord + `tfds.data_source`), batched by grain.

digits / image_folder (datasets vit_jax builds itself) -> sources (open any prepared TFDS split by name)
-> preprocessing (per-example resize, crop, flip, value range) -> pipeline (grain iterators, eval padding).
"""
