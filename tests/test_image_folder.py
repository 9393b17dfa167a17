import numpy as np
import pytest
from PIL import Image

from vit_jax.data.image_folder import UnreadableImageError, build_image_folder, find_splits, main
from vit_jax.data.sources import dataset_builder, dataset_spec, open_split


def write_images(root, classes, count, rng, size=(12, 10), mode="RGB", suffix=".png"):
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (*size, 3) if mode == "RGB" else size
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}{suffix}")


def test_class_folders_become_a_train_split_with_sorted_class_names(tmp_path, rng):
    root = tmp_path / "pets"
    write_images(root, ["dog", "cat"], 3, rng)
    write_images(root, ["cat"], 1, rng, mode="L", suffix=".jpg")  # grayscale JPEG, converted to RGB
    builder = build_image_folder(root, "pets", data_dir=str(tmp_path / "tfds"))
    spec = dataset_spec(builder)
    assert spec.class_names == ("cat", "dog") and spec.image_shape == (None, None, 3)
    train = open_split(builder, "train")
    examples = sorted((e["file_name"].decode(), e["label"], e["image"].shape) for e in train)
    assert [(f, l) for f, l, _ in examples] == [("cat/0.jpg", 0), ("cat/0.png", 0), ("cat/1.png", 0),
                                                ("cat/2.png", 0), ("dog/0.png", 1), ("dog/1.png", 1), ("dog/2.png", 1)]
    assert all(shape == (12, 10, 3) for _, _, shape in examples)
    original = np.asarray(Image.open(root / "dog" / "1.png"))
    stored = next(e["image"] for e in train if e["file_name"] == b"dog/1.png")
    np.testing.assert_array_equal(stored, original)  # PNG bytes kept as they were


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path, rng):
    """A 16-bit PNG (PIL's `I;16`, which its own conversion clips at 255: most of it white) becomes
    `round(v * 255 / 65535)`, in a folder dataset and in `predict`'s reading alike."""
    from vit_jax.data.image_files import read_image

    root = tmp_path / "scans"
    write_images(root, ["a", "b"], 1, rng)
    levels = np.array([[0, 257, 1000, 32768], [40000, 65000, 65279, 65535]], np.uint16)
    Image.fromarray(levels).save(root / "a" / "deep.png")
    assert Image.open(root / "a" / "deep.png").mode == "I;16"
    expected = np.array([[0, 1, 4, 128], [156, 253, 254, 255]], np.uint8)
    np.testing.assert_array_equal(np.rint(levels.astype(np.float64) * 255 / 65535), expected)
    np.testing.assert_array_equal(read_image(root / "a" / "deep.png", 1)[..., 0], expected)
    train = open_split(build_image_folder(root, "scans", data_dir=str(tmp_path / "tfds")), "train")
    stored = next(e["image"] for e in train if e["file_name"] == b"a/deep.png")
    np.testing.assert_array_equal(stored, np.repeat(expected[..., None], 3, axis=-1))


def test_split_folders_become_splits(tmp_path, rng):
    root = tmp_path / "data"
    write_images(root / "train", ["a", "b"], 2, rng)
    write_images(root / "val", ["a", "b"], 1, rng)
    assert set(find_splits(root)) == {"train", "validation"}
    builder = build_image_folder(root, "ab", data_dir=str(tmp_path / "tfds"))
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 4, "validation": 2}


def test_unreadable_image_is_named_and_skipped_unless_strict(tmp_path, rng, caplog):
    root = tmp_path / "pets"
    write_images(root, ["cat", "dog"], 2, rng)
    (root / "dog" / "broken.jpg").write_bytes(b"not an image")
    (root / "dog" / "notes.txt").write_text("ignored: not an image file name")
    with pytest.raises(UnreadableImageError, match=r"unreadable image '.*dog/broken.jpg': not an image format"):
        build_image_folder(root, "strict_pets", data_dir=str(tmp_path / "tfds"), strict=True)
    builder = build_image_folder(root, "pets", data_dir=str(tmp_path / "tfds"))
    assert builder.info.splits["train"].num_examples == 4
    assert "dog/broken.jpg" in caplog.text


def test_folder_dataset_by_path_in_a_config_is_built_once_then_reused(tmp_path, rng):
    root = tmp_path / "My Pets"
    write_images(root, ["cat", "dog"], 2, rng)
    data_dir = str(tmp_path / "tfds")
    builder = dataset_builder(f"folder:{root}", data_dir)
    assert builder.name == "my_pets" and builder.info.splits["train"].num_examples == 4
    write_images(root, ["cat"], 5, rng)  # not picked up: the dataset is built once
    assert dataset_builder(f"folder:{root}", data_dir).info.splits["train"].num_examples == 4


def test_a_built_dataset_keeps_its_classes_even_where_tfds_writes_inside_the_image_folder(tmp_path, rng):
    """Images kept where TFDS writes the dataset (`DATA_DIR/NAME`, as the input-pipeline benchmark's default): TFDS's
    `1.0.0/` then sits beside the class folders, which must not turn into two classes ('1.0.0', 'train') on the next
    read, while the records' labels index the eight classes they were built with."""
    data_dir = tmp_path / "tfds"
    root = data_dir / "pets"
    write_images(root / "train", ["cat", "dog", "eel"], 2, rng)
    first = dataset_spec(dataset_builder(f"folder:{root}", str(data_dir)))
    assert (root / "1.0.0").is_dir() and first.class_names == ("cat", "dog", "eel")
    write_images(root / "train", ["fox"], 1, rng)  # a class added after the build
    again = dataset_builder(f"folder:{root}", str(data_dir))
    assert dataset_spec(again).class_names == ("cat", "dog", "eel")
    assert sorted(int(e["label"]) for e in open_split(again, "train")) == [0, 0, 1, 1, 2, 2]


def test_cli_builds_and_reports(tmp_path, rng, capsys):
    write_images(tmp_path / "imgs", ["x", "y"], 1, rng)
    assert main([str(tmp_path / "imgs"), "--name", "xy", "--data-dir", str(tmp_path / "tfds")]) == 0  # old: --data_dir
    out = capsys.readouterr().out
    assert "dataset 'xy'" in out and "(train: 2)" in out and "--config.dataset=xy" in out
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing"), "--name", "m", "--data_dir", str(tmp_path / "tfds")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main([str(tmp_path / "imgs"), "--name", "Bad-Name", "--data_dir", str(tmp_path / "tfds")])


def test_a_folder_dataset_reads_in_grain_worker_processes(tmp_path, rng):
    """The data source is pickled to each worker, which rebuilds the builder from its arguments; images kept
    encoded (the training path from disk) give the same batches as decoded ones."""
    from vit_jax.data.pipeline import train_iterator
    from vit_jax.data.preprocessing import Preprocess

    write_images(tmp_path / "pets", ["cat", "dog"], 4, rng, size=(20, 16), suffix=".jpg")
    builder = dataset_builder(f"folder:{tmp_path / 'pets'}", str(tmp_path / "tfds"))
    preprocess = Preprocess(image_size=(8, 8), train_crop="inception", flip=True)
    batches = [train_iterator(open_split(builder, "train", keep_encoded=encoded), preprocess, batch_size=4, seed=0,
                              num_workers=workers) for workers, encoded in ((0, False), (1, True))]
    for _ in range(3):
        in_process, in_worker = next(batches[0]), next(batches[1])
        np.testing.assert_array_equal(in_worker["image"], in_process["image"])
        np.testing.assert_array_equal(in_worker["label"], in_process["label"])


def test_a_folder_with_one_class_is_refused_before_anything_is_built(tmp_path, rng):
    write_images(tmp_path / "one", ["only"], 2, rng)
    with pytest.raises(ValueError, match=r"image folder '.*/one' has one class \('only'\); a classifier needs at least "
                                         r"two class subfolders"):
        build_image_folder(tmp_path / "one", "one", data_dir=str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds").exists()


def test_an_image_too_large_to_decode_is_reported_by_name(tmp_path, monkeypatch):
    """PIL refuses images over twice `Image.MAX_IMAGE_PIXELS` (decompression bombs) with an exception of its own:
    reported like any unreadable file, not as a traceback."""
    from vit_jax.data.image_files import read_image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)
    with pytest.raises(UnreadableImageError, match=r"unreadable image .*huge.png.*2000 pixels"):
        read_image(tmp_path / "huge.png", 3)
