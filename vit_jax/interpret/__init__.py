"""Looking inside a trained ViT: the numbers behind the ViT paper's Figure 7 and attention pictures.

`posemb_similarity`, `patch_filters` and `attention` compute arrays (tested against hand-computed values);
`figures` draws them with matplotlib; `python -m vit_jax.visualize` and the trainer's TensorBoard pictures use both.
"""
