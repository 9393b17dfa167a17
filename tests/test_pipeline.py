import numpy as np
import pytest

from vit_jax.data.in_memory import batchable, shift
from vit_jax.data.pipeline import eval_batches, num_eval_steps, pad_batch, train_iterator
from vit_jax.data.preprocessing import Preprocess, pad_and_random_crop, resize
from vit_jax.data.sources import InMemorySource

PLAIN = Preprocess(image_size=(2, 2), value_range=(0.0, 255.0))  # no augmentation: pixels identify examples
AUGMENTED = Preprocess(image_size=(4, 4), train_crop="pad", crop_padding=1, flip=True)


def toy_source(n: int) -> list[dict]:
    """Example i is a 2x2 image whose pixels all equal i % 256, with label i."""
    return [{"image": np.full((2, 2, 1), i % 256, np.uint8), "label": i} for i in range(n)]


def take(iterator, steps):
    return [next(iterator) for _ in range(steps)]


# The stream's properties hold for both training paths: image by image (any source), and a batch at a time (a
# split held in memory at the training size: vit_jax.data.in_memory).
PATHS = ("per_image", "in_memory")


def on_path(path, examples, preprocess=AUGMENTED):
    source = InMemorySource(examples, transform=preprocess.resized) if path == "in_memory" else examples
    assert batchable(source, preprocess) == (path == "in_memory")
    return source


@pytest.mark.parametrize("path", PATHS)
def test_same_seed_same_batches_other_seed_other_order(path):
    source = on_path(path, [{"image": np.random.default_rng(i).integers(0, 256, (4, 4, 1), dtype=np.uint8),
                             "label": i} for i in range(50)])
    a = take(train_iterator(source, AUGMENTED, batch_size=8, seed=1), 9)
    b = take(train_iterator(source, AUGMENTED, batch_size=8, seed=1), 9)
    c = take(train_iterator(source, AUGMENTED, batch_size=8, seed=2), 9)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert any(not np.array_equal(x["label"], z["label"]) for x, z in zip(a, c))


@pytest.mark.parametrize("path", PATHS)
def test_each_epoch_is_a_fresh_permutation_of_every_example(path):
    source = on_path(path, toy_source(40), PLAIN)
    labels = np.concatenate([b["label"] for b in take(train_iterator(source, PLAIN, batch_size=8, seed=0), 10)])
    first, second = labels[:40], labels[40:]
    assert sorted(first) == sorted(second) == list(range(40))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("path", PATHS)
def test_restoring_the_iterator_state_continues_exactly(rng, path):
    source = on_path(path, toy_source(30))
    uninterrupted = take(train_iterator(source, AUGMENTED, batch_size=4, seed=3), 12)
    first = train_iterator(source, AUGMENTED, batch_size=4, seed=3)
    take(first, 5)
    state = first.get_state()
    resumed = train_iterator(source, AUGMENTED, batch_size=4, seed=3)
    resumed.set_state(state)
    for expected, got in zip(uninterrupted[5:], take(resumed, 7)):
        np.testing.assert_array_equal(expected["image"], got["image"])
        np.testing.assert_array_equal(expected["label"], got["label"])


def global_batches(source, steps, process_count, start=0, batch_size=12):
    """The global batches of `process_count` processes (process 0's share first, as the trainer lays them out)."""
    shards = [take(train_iterator(source, AUGMENTED, batch_size=batch_size // process_count, seed=5, start=start,
                                  process_index=p, process_count=process_count), steps) for p in range(process_count)]
    return [{key: np.concatenate([shard[step][key] for shard in shards]) for key in ("image", "label")}
            for step in range(steps)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("saved_by, resumed_by", [(2, 1), (1, 2), (2, 3), (3, 2)])
def test_a_position_saved_by_some_processes_resumes_on_others_where_an_uninterrupted_run_would_be(saved_by,
                                                                                                 resumed_by, path):
    source = on_path(path, toy_source(30))  # an epoch is 2.5 global batches of 12: the resumed steps cross epochs
    uninterrupted = global_batches(source, 7, resumed_by)
    before = global_batches(source, 4, saved_by)  # the saved run's 4 steps consumed 4 x 12 examples
    assert sorted(np.concatenate([b["label"] for b in before])) == sorted(
        np.concatenate([b["label"] for b in uninterrupted[:4]]))
    resumed = global_batches(source, 3, resumed_by, start=4 * 12)
    for expected, got in zip(uninterrupted[4:], resumed):
        np.testing.assert_array_equal(got["label"], expected["label"])
        np.testing.assert_array_equal(got["image"], expected["image"])  # augmentation too


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_make_up_the_single_process_global_batch(process_count, path):
    source = on_path(path, toy_source(64))
    single = take(train_iterator(source, AUGMENTED, batch_size=16, seed=0), 6)
    shards = [take(train_iterator(source, AUGMENTED, batch_size=16 // process_count, seed=0,
                                  process_index=p, process_count=process_count), 6) for p in range(process_count)]
    for step, batch in enumerate(single):  # in process order, as the global array places them: the same rows, in
        # the same order (batch-level augmentation pairs rows: Mixup's mirror must not depend on the process count)
        np.testing.assert_array_equal(np.concatenate([shard[step]["label"] for shard in shards]), batch["label"])
        np.testing.assert_array_equal(np.concatenate([shard[step]["image"] for shard in shards]), batch["image"])


@pytest.mark.parametrize("path", PATHS)
def test_repeated_augmentation_reads_each_epochs_first_images_repeatedly_each_augmented_anew(path):
    """DeiT's RASampler: epoch e (N = 10 examples) is the first ceil(10 / 3) images of the plain stream's epoch e,
    3 times each in a row (the last cut short), with fresh draws each time; any process count and a resumed
    position read the same global batches."""
    examples = [{"image": np.random.default_rng(i).integers(0, 256, (4, 4, 1), dtype=np.uint8), "label": i}
                for i in range(10)]
    source = on_path(path, examples)
    labels = lambda batches: np.concatenate([b["label"] for b in batches])
    plain = labels(take(train_iterator(source, AUGMENTED, batch_size=6, seed=4), 5))
    repeated = take(train_iterator(source, AUGMENTED, batch_size=6, seed=4, repeats=3), 5)
    positions = np.arange(30)
    epochs, within = np.divmod(positions, 10)
    np.testing.assert_array_equal(labels(repeated), plain[epochs * 10 + within // 3])
    assert [len(set(labels(repeated)[e * 10:(e + 1) * 10])) for e in range(3)] == [4, 4, 4]
    images = np.concatenate([b["image"] for b in repeated])
    copies = [(q, q + 1) for q in positions[:-1] if within[q] // 3 == within[q + 1] // 3 and epochs[q] == epochs[q + 1]]
    assert sum(np.array_equal(images[a], images[b]) for a, b in copies) <= len(copies) // 4  # 1/18 alike by chance
    halves = [take(train_iterator(source, AUGMENTED, batch_size=3, seed=4, repeats=3, process_index=p,
                                  process_count=2, start=12), 3) for p in range(2)]
    for step in range(3):
        both = {key: np.concatenate([half[step][key] for half in halves]) for key in ("image", "label")}
        np.testing.assert_array_equal(both["label"], repeated[step + 2]["label"])
        np.testing.assert_array_equal(both["image"], repeated[step + 2]["image"])


@pytest.mark.parametrize("n, batch_size, process_count", [(100, 32, 1), (96, 32, 1), (101, 16, 3), (5, 8, 2)])
def test_eval_sees_every_example_exactly_once(n, batch_size, process_count):
    source = toy_source(n)
    steps = num_eval_steps(n, batch_size, process_count)
    seen = []
    for p in range(process_count):
        batches = list(eval_batches(source, PLAIN, batch_size=batch_size, process_index=p,
                                    process_count=process_count))
        assert len(batches) == steps  # every process runs the same number of steps
        for batch in batches:
            assert batch["image"].shape == (batch_size, 2, 2, 1) and batch["mask"].shape == (batch_size,)
            real = batch["mask"] == 1
            assert np.all(batch["mask"][~real] == 0) and np.all(batch["image"][~real] == 0)
            seen.extend(batch["label"][real].tolist())
    assert sorted(seen) == list(range(n))


def test_pad_batch_masks_the_padding():
    batch = pad_batch([{"x": np.ones(2), "label": np.int32(3)}], 3)
    np.testing.assert_array_equal(batch["mask"], [1, 0, 0])
    np.testing.assert_array_equal(batch["x"], [[1, 1], [0, 0], [0, 0]])
    assert batch["label"].dtype == np.int32


@pytest.mark.parametrize("path", PATHS)
def test_worker_processes_give_the_same_batches(path):
    source = on_path(path, toy_source(40))
    threads = take(train_iterator(source, AUGMENTED, batch_size=8, seed=0), 6)
    workers = take(train_iterator(source, AUGMENTED, batch_size=8, seed=0, num_workers=2), 6)
    for a, b in zip(threads, workers):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_batch_shift_is_pad_and_crop_for_every_offset(rng):
    images = rng.integers(1, 256, (12, 5, 6, 2), dtype=np.uint8)
    top, left = rng.integers(-2, 3, 12), rng.integers(-2, 3, 12)
    shifted = shift(images, top, left, 2)
    for i in range(12):  # pad_and_random_crop with a generator that draws exactly (top, left)
        drawn = np.array([top[i], left[i]])
        draws = type("Draws", (), {"integers": lambda self, lo, hi, size, drawn=drawn: drawn})()
        np.testing.assert_array_equal(shifted[i], pad_and_random_crop(images[i], 2, draws))


def test_in_memory_batches_are_valid_augmentations_drawn_evenly(rng):
    """Every image is one of the 9 shifts x 2 flips of its (resized) source image, each variant about equally
    often over many draws, the draws independent of each other."""
    examples = [{"image": rng.integers(1, 256, (3, 3, 1), dtype=np.uint8), "label": i} for i in range(20)]
    source = on_path("in_memory", examples)
    variants = {}
    for i, example in enumerate(examples):
        image = resize(example["image"], (4, 4))
        for top in (-1, 0, 1):
            for left in (-1, 0, 1):
                for flip in (False, True):
                    out = shift(image[None], np.array([top]), np.array([left]), 1)[0]
                    out = out[:, ::-1] if flip else out
                    variants[(i, out.tobytes())] = (top, left, flip)
    counts = {}
    for batch in take(train_iterator(source, AUGMENTED, batch_size=10, seed=4), 180):  # 1,800 draws
        raw = np.rint((batch["image"] + 1) * 127.5).astype(np.uint8)  # back from [-1, 1]
        for image, label in zip(raw, batch["label"]):
            key = variants.get((int(label), image.tobytes()))
            assert key is not None, f"image of example {label} is no shift/flip of it"
            counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 18
    expected = 1800 / 18
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 40.8  # the 99.9th percentile of chi-square with 17 degrees of freedom
