import numpy as np
from sklearn.datasets import load_digits

from vit_jax.data.digits import SPLIT_SIZES, split_indices
from vit_jax.data.sources import dataset_builder, dataset_spec, open_split


def test_splits_are_fixed_disjoint_stratified_and_cover_all_1797_images():
    splits = split_indices()
    assert {k: len(v) for k, v in splits.items()} == SPLIT_SIZES == {"train": 1257, "validation": 180, "test": 360}
    union = np.concatenate(list(splits.values()))
    assert len(np.unique(union)) == len(union) == 1797
    labels = load_digits().target
    for split, indices in splits.items():
        counts = np.bincount(labels[indices], minlength=10)
        expected = np.bincount(labels, minlength=10) * len(indices) / 1797
        assert np.abs(counts - expected).max() <= 1.0, split  # stratified: class shares as in the whole set
    again = split_indices()
    assert all(np.array_equal(splits[k], again[k]) for k in splits)


def test_built_dataset_holds_the_sklearn_pixels_and_labels(digits_data_dir):
    builder = dataset_builder("sklearn_digits", digits_data_dir)
    spec = dataset_spec(builder)
    assert (spec.num_classes, spec.image_shape, spec.class_names[3]) == (10, (8, 8, 1), "3")
    digits = load_digits()
    expected = {tuple(np.round(digits.images[i] * 255 / 16).astype(np.uint8).ravel()): digits.target[i]
                for i in split_indices()["test"]}
    test = open_split(builder, "test")
    assert len(test) == 360
    for i in range(0, 360, 37):
        example = test[i]
        assert example["image"].dtype == np.uint8 and example["image"].shape == (8, 8, 1)
        assert expected[tuple(example["image"].ravel())] == example["label"]


def test_building_needs_no_tensorflow(tmp_path):
    import subprocess
    import sys

    code = ("import sys\n"
            "from vit_jax.data.sources import dataset_builder, open_split\n"
            f"b = dataset_builder('sklearn_digits', {str(tmp_path)!r}); s = open_split(b, 'train'); print(len([s[i] for i in range(3)]))\n"
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-2:] == ["3", "False"]
