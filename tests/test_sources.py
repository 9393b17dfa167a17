import numpy as np
import pytest

from vit_jax.data.sources import (
    DatasetError,
    InMemorySource,
    dataset_builder,
    dataset_spec,
    fits_in_memory,
    open_split,
    split_size,
)


def test_any_prepared_arrayrecord_dataset_opens_by_name_with_slices(digits_data_dir):
    builder = dataset_builder("sklearn_digits", digits_data_dir)
    assert split_size(builder, "train[:90%]") + split_size(builder, "train[90%:]") == 1257
    assert split_size(builder, "train+validation") == 1437
    head = open_split(builder, "train[:10]")
    full = open_split(builder, "train")
    assert len(head) == 10
    np.testing.assert_array_equal(head[3]["image"], full[3]["image"])


def test_unknown_split_lists_the_splits(digits_data_dir):
    builder = dataset_builder("sklearn_digits", digits_data_dir)
    with pytest.raises(DatasetError, match=r"unknown split 'valid' of dataset 'sklearn_digits'; splits: "
                                           r"\['test', 'train', 'validation'\]"):
        open_split(builder, "valid")


def test_unknown_and_unprepared_datasets_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'no_such_set': .* vit_jax builds \['cluttered_digits', 'moving_digits', 'sklearn_digits'\]"):
        dataset_builder("no_such_set", str(tmp_path))
    with pytest.raises(DatasetError, match=r"dataset 'cifar10' is not prepared under .*; prepare it once in "
                                           r"ArrayRecord format .*tfds build cifar10 --file_format=array_record"):
        dataset_builder("cifar10", str(tmp_path))


def test_in_memory_source_holds_the_same_examples(digits_data_dir):
    builder = dataset_builder("sklearn_digits", digits_data_dir)
    source = open_split(builder, "validation")
    cached = InMemorySource(source, chunk=64)
    assert len(cached) == len(source) == 180
    for i in (0, 63, 64, 179):
        np.testing.assert_array_equal(cached[i]["image"], source[i]["image"])
        assert cached[i]["label"] == source[i]["label"]
    spec = dataset_spec(builder)
    assert fits_in_memory(spec, 1797)
    assert not fits_in_memory(spec, 1797, budget_bytes=1000)


def test_a_dataset_prepared_elsewhere_opens_by_name_from_its_files(tmp_path, rng):
    from PIL import Image

    from vit_jax.data.image_folder import build_image_folder

    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "images" / name / "0.png")
    build_image_folder(tmp_path / "images", "two_images", data_dir=str(tmp_path / "tfds"))
    builder = dataset_builder("two_images", str(tmp_path / "tfds"))  # no builder class: read from the files
    assert type(builder).__name__ == "ReadOnlyBuilder"
    assert dataset_spec(builder).class_names == ("a", "b")
    assert sorted(int(e["label"]) for e in open_split(builder, "train")) == [0, 1]
