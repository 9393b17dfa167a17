"""Patch n' pack data: per-image token sets, token dropping, first-fit packing into consistent sequences, every
evaluation image exactly once, resumable training batches, and a packed training run from configs/navit.py."""

import collections
import json

import numpy as np
import pytest

from tests.conftest import load_config_file
from vit_jax.build import set_up
from vit_jax.config_validation import ConfigError
from vit_jax.data.packing import (
    PackedPreprocess,
    drop_rate_for,
    native_size,
    packed_eval_batches,
    packed_train_iterator,
    padding_fraction,
    tokens_kept,
)
from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import dataset_builder, open_split
from vit_jax.models.patching import patchify
from vit_jax.train import train_and_evaluate

SIZES = ((8, 8), (12, 16), (16, 12), (20, 20), (8, 16))
RATES = (0.0, 0.5)


def preprocess(drop_rate=RATES, sizes=SIZES) -> PackedPreprocess:
    return PackedPreprocess(Preprocess(image_size=(8, 8)), patch_size=(4, 4), max_grid=(5, 5), image_sizes=sizes,
                            drop_rate=drop_rate)


@pytest.fixture(scope="module")
def splits(digits_data_dir):
    builder = dataset_builder("sklearn_digits", digits_data_dir)
    return {split: open_split(builder, split) for split in ("train", "validation")}


def test_drop_rate_is_linear_in_the_token_count():
    assert drop_rate_for((0.0, 0.5), 4, (4, 25)) == 0.0
    assert drop_rate_for((0.0, 0.5), 25, (4, 25)) == 0.5
    assert drop_rate_for((0.1, 0.4), 11, (4, 25)) == pytest.approx(0.1 + 0.3 * 7 / 21)
    assert drop_rate_for(0.25, 100, (4, 25)) == 0.25
    assert drop_rate_for(lambda n: n / 100, 30, (4, 25)) == 0.3
    assert [tokens_kept(n, 0.5) for n in (1, 2, 3, 25)] == [1, 1, 2, 13]  # never below one token


def test_native_size_keeps_the_aspect_ratio_within_the_largest_grid():
    assert native_size((30, 60), (4, 4), (8, 8)) == (16, 32)  # scaled by 32/60, rounded down to whole patches
    assert native_size((12, 8), (4, 4), (8, 8)) == (12, 8)  # small enough: its own size
    assert native_size((2, 100), (4, 4), (8, 8)) == (4, 32)  # at least one patch high


def test_dropped_tokens_are_a_subset_of_the_images_patches_at_their_coordinates(splits):
    example = splits["train"][0]
    pp = preprocess(drop_rate=(0.5, 0.5), sizes=((20, 16),))
    tokens = pp.train(example, np.random.default_rng(3))
    full = patchify(Preprocess(image_size=(20, 16)).eval(example)["image"][None], (4, 4))[0]  # 5x4 grid
    assert len(tokens["patches"]) == tokens_kept(20, 0.5) == 10
    rows, cols = tokens["coords"].T
    assert len(set(zip(rows, cols))) == 10 and rows.max() < 5 and cols.max() < 4
    np.testing.assert_array_equal(tokens["patches"], full[rows, cols].reshape(10, -1))
    np.testing.assert_array_equal(tokens["grid"], [[5, 4]])


def test_packed_sequences_are_consistent(splits):
    pp = preprocess()
    batches = packed_train_iterator(splits["train"], pp, batch_size=8, seq_len=64, max_images=6, seed=0)
    for _ in range(3):
        batch = next(batches)
        for seq in range(8):
            ids, mask, grids = batch["image_ids"][seq], batch["mask"][seq], batch["image_grids"][seq]
            real = int(mask.sum())
            assert 1 <= real <= 6 and np.all(mask[:real] == 1) and np.all(mask[real:] == 0)
            assert set(np.unique(ids)) <= set(range(real + 1))
            for slot in range(real):
                tokens = ids == slot + 1
                gh, gw = grids[slot]
                rate = drop_rate_for(RATES, gh * gw, (4, 25))
                assert tokens.sum() == tokens_kept(gh * gw, rate)  # the mask holds exactly the kept tokens
                coords = batch["coords"][seq][tokens]
                assert coords[:, 0].max() < gh and coords[:, 1].max() < gw
                assert len({tuple(c) for c in coords}) == len(coords)
            assert np.all(batch["patches"][seq][ids == 0] == 0)  # padding holds nothing
        assert padding_fraction(batch["image_ids"]) == np.mean(batch["image_ids"] == 0) < 0.3


def test_evaluation_packs_every_image_exactly_once_the_same_way_each_time(splits):
    source = splits["validation"]
    passes = [list(packed_eval_batches(source, preprocess(), batch_size=4, seq_len=64, max_images=6))
              for _ in range(2)]
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in passes[0]])
    assert collections.Counter(labels.tolist()) == collections.Counter(int(e["label"]) for e in source)
    for first, second in zip(*passes, strict=True):
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
    tokens = sum(int((b["image_ids"] > 0).sum()) for b in passes[0])
    sizes = [b["image_grids"][b["mask"] == 1] for b in passes[0]]
    assert tokens == sum(int(g.prod(axis=1).sum()) for g in sizes)  # evaluation drops nothing


def test_the_training_stream_resumes_exactly(splits):
    batches = packed_train_iterator(splits["train"], preprocess(), batch_size=4, seq_len=64, max_images=6, seed=1)
    next(batches)
    state = batches.get_state()
    expected = [next(batches) for _ in range(2)]
    batches.set_state(state)
    for batch in expected:
        got = next(batches)
        for key in batch:
            np.testing.assert_array_equal(got[key], batch[key])


@pytest.mark.parametrize("override,field", [
    ("packing.seq_len=16", "packing.seq_len"),
    ("log_pictures=eval", "log_pictures"),
    ("flexi.patch_sizes=(2,4)", "flexi.patch_sizes"),
    ("packing.image_sizes=((8,10),)", "packing.image_sizes"),
    ("packing.max_grid=(8,8)", "packing.max_grid"),
])
def test_packed_configs_that_cannot_work_are_refused_before_compiling(digits_data_dir, override, field):
    config = load_config_file("navit", override)
    config.data_dir = digits_data_dir
    with pytest.raises(ConfigError, match=f"config.{field} = "):
        set_up(config)


@pytest.mark.slow
def test_packed_training_on_mixed_resolution_digits_learns_and_resumes(digits_data_dir, tmp_path):
    def config(steps):
        c = load_config_file("navit", f"num_steps={steps},eval_every=40,checkpoint_every=40,log_every=20,"
                                      "optimizer.warmup_steps=10,batch_size=16,model.num_layers=2")
        c.data_dir = digits_data_dir
        return c

    train_and_evaluate(config(40), tmp_path)
    results = train_and_evaluate(config(80), tmp_path)  # resumes at step 40, data position included
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == [20, 40, 60, 80]
    padding = [r["train/padding_fraction"] for r in records if "train/padding_fraction" in r]
    assert all(0 <= p < 0.2 for p in padding)
    assert results["test/num_examples"] == 360
    assert results["test/accuracy"] > 0.3  # chance is 0.1 (80 steps, a schedule restarted at 40: not converged)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.3
