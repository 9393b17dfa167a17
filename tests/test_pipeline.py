import numpy as np
import pytest

from vit_jax.data.pipeline import eval_batches, num_eval_steps, pad_batch, train_iterator
from vit_jax.data.preprocessing import Preprocess

PLAIN = Preprocess(image_size=(2, 2), value_range=(0.0, 255.0))  # no augmentation: pixels identify examples
AUGMENTED = Preprocess(image_size=(4, 4), train_crop="pad", crop_padding=1, flip=True)


def toy_source(n: int) -> list[dict]:
    """Example i is a 2x2 image whose pixels all equal i % 256, with label i."""
    return [{"image": np.full((2, 2, 1), i % 256, np.uint8), "label": i} for i in range(n)]


def take(iterator, steps):
    return [next(iterator) for _ in range(steps)]


def test_same_seed_same_batches_other_seed_other_order():
    source = [{"image": np.random.default_rng(i).integers(0, 256, (4, 4, 1), dtype=np.uint8), "label": i}
              for i in range(50)]
    a = take(train_iterator(source, AUGMENTED, batch_size=8, seed=1), 9)
    b = take(train_iterator(source, AUGMENTED, batch_size=8, seed=1), 9)
    c = take(train_iterator(source, AUGMENTED, batch_size=8, seed=2), 9)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert any(not np.array_equal(x["label"], z["label"]) for x, z in zip(a, c))


def test_each_epoch_is_a_fresh_permutation_of_every_example():
    labels = np.concatenate([b["label"] for b in take(train_iterator(toy_source(40), PLAIN, batch_size=8, seed=0), 10)])
    first, second = labels[:40], labels[40:]
    assert sorted(first) == sorted(second) == list(range(40))
    assert not np.array_equal(first, second)


def test_restoring_the_iterator_state_continues_exactly(rng):
    source = toy_source(30)
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


@pytest.mark.parametrize("saved_by, resumed_by", [(2, 1), (1, 2), (2, 3), (3, 2)])
def test_a_position_saved_by_some_processes_resumes_on_others_where_an_uninterrupted_run_would_be(saved_by,
                                                                                                 resumed_by):
    source = toy_source(30)  # an epoch is 2.5 global batches of 12: the resumed steps cross epochs
    uninterrupted = global_batches(source, 7, resumed_by)
    before = global_batches(source, 4, saved_by)  # the saved run's 4 steps consumed 4 x 12 examples
    assert sorted(np.concatenate([b["label"] for b in before])) == sorted(
        np.concatenate([b["label"] for b in uninterrupted[:4]]))
    resumed = global_batches(source, 3, resumed_by, start=4 * 12)
    for expected, got in zip(uninterrupted[4:], resumed):
        np.testing.assert_array_equal(got["label"], expected["label"])
        np.testing.assert_array_equal(got["image"], expected["image"])  # augmentation too


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_make_up_the_single_process_global_batch(process_count):
    source = toy_source(64)
    single = take(train_iterator(source, AUGMENTED, batch_size=16, seed=0), 6)
    shards = [take(train_iterator(source, AUGMENTED, batch_size=16 // process_count, seed=0,
                                  process_index=p, process_count=process_count), 6) for p in range(process_count)]
    for step, batch in enumerate(single):
        labels = np.concatenate([shard[step]["label"] for shard in shards])
        images = np.concatenate([shard[step]["image"] for shard in shards])
        order = np.argsort(labels)
        assert sorted(labels) == sorted(batch["label"])  # disjoint shards, same global batch
        np.testing.assert_array_equal(images[order], batch["image"][np.argsort(batch["label"])])


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


def test_worker_processes_give_the_same_batches():
    source = toy_source(40)
    threads = take(train_iterator(source, AUGMENTED, batch_size=8, seed=0), 6)
    workers = take(train_iterator(source, AUGMENTED, batch_size=8, seed=0, num_workers=2), 6)
    for a, b in zip(threads, workers):
        np.testing.assert_array_equal(a["image"], b["image"])
