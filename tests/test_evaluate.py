"""`python -m vit_jax.evaluate`: a checkpoint's classifier scored on a dataset split, against the run's own logged
figures and against timm scoring its own model on the same files."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vit_jax.evaluate import main
from vit_jax.timm_compat import import_timm

COLUMNS = [0, 1, 2, 500, 998, 999]  # six of ImageNet's classes, named by WordNet ID as ImageNet-R's folders are


def wordnet_ids():
    """column -> WordNet ID, as timm's ImageNetInfo has them (an independent table)."""
    import_timm()
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {column: info.index_to_label_name(column) for column in COLUMNS}


@pytest.mark.xdist_group("readme_run")  # the worker that runs the README's main command
def test_the_readme_run_scores_what_it_logged(readme_run, capsys, tmp_path):
    """`--checkpoint=WORKDIR` scores the run's test split with its evaluation view: the run's logged final test
    accuracy, top-5 and loss; `--split` the validation figures logged at the same step; `--features` the logits
    the model gives each image."""
    import jax

    from vit_jax.checkpoint.trained_model import load_trained_model
    from vit_jax.data.sources import dataset_builder, open_split

    workdir, _ = readme_run
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    test = [m for m in logged if "test/accuracy" in m][-1]
    validation = [m for m in logged if m.get("step") == test["step"] and "eval/accuracy" in m][-1]
    out = tmp_path / "eval.json"
    assert main([f"--checkpoint={workdir}", f"--out={out}", "--batch-size=100",
                 f"--features={tmp_path / 'logits.npz'}"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert (report["test_split"], report["num_test"], report["image_size"], report["classes"]) == ("test", 360,
                                                                                                   [16, 16], 10)
    assert report["top1"] == pytest.approx(test["test/accuracy"], abs=1e-9)
    assert report["top5"] == pytest.approx(test["test/top5_accuracy"], abs=1e-9)
    assert report["loss"] == pytest.approx(test["test/loss"], rel=1e-5)
    assert "on sklearn_digits (test: 360 images) at 16x16 (crop 1, bilinear), the head's 10 classes" in printed
    assert f"top-1 {report['top1']:.2%}  top-5 100.00%  cross-entropy {report['loss']:.4f}" in printed

    trained = load_trained_model(workdir)
    examples = list(open_split(dataset_builder("sklearn_digits", report["data_dir"]), "test"))
    images = np.stack([trained.preprocess.eval(e)["image"] for e in examples])
    expected = np.asarray(jax.jit(lambda x: trained.model.apply({"params": trained.params}, x, train=False))(images))
    with np.load(tmp_path / "logits.npz", allow_pickle=False) as saved:
        np.testing.assert_allclose(saved["test"], expected, atol=2e-5, rtol=1e-5)
        np.testing.assert_array_equal(saved["test_labels"], [e["label"] for e in examples])

    assert main([f"--checkpoint={workdir}", "--split=validation", f"--out={out}"]) == 0
    report = json.loads(out.read_text())
    assert (report["test_split"], report["num_test"]) == ("validation", 180)
    assert (report["top1"], report["loss"]) == pytest.approx((validation["eval/accuracy"], validation["eval/loss"]),
                                                             rel=1e-5)


@pytest.fixture(scope="module")
def imagenet_head(tmp_path_factory):
    """A small timm ViT with ImageNet's 1,000-class head (random weights), in the Hub's layout, and a folder of
    images in six of its classes named by WordNet ID, of assorted sizes (the evaluation view resizes and crops)."""
    import torch

    timm = import_timm()
    root = tmp_path_factory.mktemp("imagenet_head")
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, depth=2, embed_dim=32, num_heads=2,
                              num_classes=1000, img_size=32, pretrained_cfg_overlay=dict(input_size=(3, 32, 32)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    timm.models.save_for_hf(model, root / "hub", safe_serialization=True)
    rng = np.random.default_rng(0)
    for wnid in wordnet_ids().values():
        (root / "images" / wnid).mkdir(parents=True)
        for k in range(4):
            h, w = rng.integers(24, 60, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / wnid / f"{k}.png")
    return model, root


def test_a_dataset_of_some_imagenet_classes_is_scored_on_their_columns_as_timm_scores_them(imagenet_head, capsys):
    """A 1,000-class head on a folder of six classes named by WordNet ID (ImageNet-R's layout): each image through
    timm's own `resolve_data_config` + `create_transform`, its logits restricted to those classes' columns, give
    the same top-1, top-5 and cross-entropy, image by image."""
    import torch
    from timm.data import create_transform, resolve_data_config

    model, root = imagenet_head
    out = root / "eval.json"
    assert main([f"--checkpoint={root / 'hub'}", f"--dataset=folder:{root / 'images'}", f"--data-dir={root / 'tfds'}",
                 "--split=train", f"--out={out}", f"--features={root / 'logits.npz'}", "--batch-size=8"]) == 0
    assert "(train: 24 images) at 32x32 (crop 0.9, bicubic), 6 of the head's 1000 classes (matched by name)" in \
        capsys.readouterr().out
    report = json.loads(out.read_text())
    columns, wnids = COLUMNS, sorted(wordnet_ids().values())
    assert report["columns"] == columns

    transform = create_transform(**resolve_data_config({}, model=model))
    files = sorted((root / "images").glob("*/*.png"))
    pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in files])
    labels = np.asarray([wnids.index(path.parent.name) for path in files])
    with torch.no_grad():
        theirs = model(pixels)[:, columns]
    losses = torch.nn.functional.cross_entropy(theirs, torch.from_numpy(labels), reduction="none").numpy()
    ranks = np.sum(theirs.numpy() > theirs.numpy()[np.arange(len(labels)), labels][:, None], axis=1)
    assert report["top1"] == pytest.approx(np.mean(ranks == 0), abs=1e-9)
    assert report["top5"] == pytest.approx(np.mean(ranks < 5), abs=1e-9)
    assert 0 < report["top5"] < 1 and report["loss"] == pytest.approx(losses.mean(), rel=1e-4)
    with np.load(root / "logits.npz", allow_pickle=False) as saved:  # the same rows, in the dataset's order
        ours, our_labels = saved["test"], saved["test_labels"]
    assert sorted(our_labels) == sorted(labels)
    np.testing.assert_allclose(np.sort(ours, axis=0), np.sort(theirs.numpy(), axis=0), atol=2e-4)


def test_imagenet_r_and_a_in_tfds_are_scored_on_their_200_columns_as_timm_lists_them():
    """TFDS's `imagenet_r` and `imagenet_a` keep ImageNet's 1,000 labels: by default their 200 classes' columns are
    scored, timm's `imagenet_{r,a}_indices.txt` (an independent list: head columns, not WordNet IDs)."""
    from pathlib import Path

    import_timm()
    import timm
    from timm.data import ImageNetInfo

    from vit_jax.data.class_map import class_map, scored_classes

    info = ImageNetInfo()
    wnids = tuple(info.index_to_label_name(i) for i in range(1000))
    lemmas = tuple(info.index_to_description(i) for i in range(1000))  # a timm checkpoint's class names
    for name in ("imagenet_r", "imagenet_a"):
        classes = class_map(lemmas, 1000, "hf-hub:x", wnids, name, *scored_classes(None, name))
        indices = Path(timm.__file__).parent / "data" / "_info" / f"{name}_indices.txt"
        expected = [int(line) for line in indices.read_text().split()]
        assert classes.columns.tolist() == expected
        assert classes.description == f"200 of the head's 1000 classes ({name})"
        assert [classes.positions[c] for c in expected] == list(range(200))
        assert np.sum(classes.positions >= 0) == 200
    classes = class_map(lemmas, 1000, "hf-hub:x", wnids, "imagenet2012", *scored_classes(None, "imagenet2012"))
    assert classes.columns.tolist() == list(range(1000)) and classes.description == "the head's 1000 classes"


def test_classes_from_a_file_score_those_columns_and_leave_out_the_other_images(imagenet_head, capsys):
    """`--classes FILE`: WordNet IDs and head columns; images of the other classes are left out and counted."""
    import torch
    from timm.data import create_transform, resolve_data_config

    model, root = imagenet_head
    ids = wordnet_ids()
    (root / "three.txt").write_text(f"{ids[0]}\n{ids[500]}\n999\n")
    out = root / "three.json"
    assert main([f"--checkpoint={root / 'hub'}", f"--dataset=folder:{root / 'images'}", f"--data-dir={root / 'tfds'}",
                 "--split=train", f"--out={out}", f"--classes={root / 'three.txt'}"]) == 0
    assert "(train: 12 images; 12 of classes not scored left out) at 32x32 (crop 0.9, bicubic), 3 of the head's " \
           "1000 classes (three.txt)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert (report["columns"], report["count"], report["skipped"]) == ([0, 500, 999], 12, 12)
    assert report["top5"] is None  # three classes: always among the top five
    transform = create_transform(**resolve_data_config({}, model=model))
    files = [path for column in (0, 500, 999) for path in sorted((root / "images" / ids[column]).glob("*.png"))]
    labels = np.repeat(np.arange(3), 4)
    with torch.no_grad():
        theirs = model(torch.stack([transform(Image.open(path).convert("RGB")) for path in files]))[:, [0, 500, 999]]
    loss = torch.nn.functional.cross_entropy(theirs, torch.from_numpy(labels)).item()
    assert report["top1"] == pytest.approx(np.mean(theirs.numpy().argmax(1) == labels), abs=1e-9)
    assert report["loss"] == pytest.approx(loss, rel=1e-4)
    for classes, message in (("nope", "--classes nope: expected imagenet_a or imagenet_r, or a file"),
                             (str(root / "three.json"), "are neither a class name nor a column of")):  # JSON lines
        assert main([f"--checkpoint={root / 'hub'}", f"--dataset=folder:{root / 'images'}",
                     f"--data-dir={root / 'tfds'}", "--split=train", f"--classes={classes}"]) == 2
        assert message in capsys.readouterr().err


class TinyRealLabels(tfds.core.GeneratorBasedBuilder):
    """imagenet2012_real's features (`original_label`, `real_label`: ReaL's sets, maybe empty) on a few images."""
    VERSION = tfds.core.Version("1.0.0")
    EXAMPLES: list = []  # (PNG bytes, original label, ReaL labels), set before it is prepared

    def _info(self):
        names = list(wordnet_ids_all())
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "original_label": tfds.features.ClassLabel(names=names),
            "real_label": tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
            "file_name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        for i, (png, original, real) in enumerate(self.EXAMPLES):
            yield i, {"image": png, "original_label": original, "real_label": real, "file_name": f"{i}.png"}


def wordnet_ids_all():
    import_timm()
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_label_name(i) for i in range(1000))


def test_imagenet_real_labels_score_the_top_class_among_each_images_set(imagenet_head, capsys):
    """A dataset laid out as TFDS's imagenet2012_real: top-1 against `original_label`, and ReaL accuracy (Beyer et
    al.): the top class is one of the image's ReaL labels, over the images that have any; the sets are made around
    timm's own top class for each image, so the figure is known by construction."""

    import torch
    from timm.data import create_transform, resolve_data_config

    model, root = imagenet_head
    transform = create_transform(**resolve_data_config({}, model=model))
    files = sorted((root / "images").glob("*/*.png"))[:8]
    with torch.no_grad():
        top = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in files])).argmax(1).tolist()
    others = [(t + 7) % 1000 for t in top]
    # ReaL sets: the top class and another (hit), another only (miss), none (not counted), the top class alone (hit)
    sets = [[top[0], others[0]], [others[1]], [], [top[3]], [others[4], (others[4] + 1) % 1000], [top[5]], [],
            [others[7]]]
    originals = [top[0], top[1], others[2], others[3], top[4], top[5], top[6], others[7]]
    TinyRealLabels.EXAMPLES = [(path.read_bytes(), o, r) for path, o, r in zip(files, originals, sets)]
    TinyRealLabels(data_dir=str(root / "tfds"), file_format="array_record").download_and_prepare()
    out = root / "real.json"
    assert main([f"--checkpoint={root / 'hub'}", "--dataset=tiny_real_labels", f"--data-dir={root / 'tfds'}",
                 "--split=validation", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["top1"] == pytest.approx(5 / 8) and report["count"] == 8
    assert (report["real_top1"], report["real_count"]) == (pytest.approx(3 / 6), 6)
    assert "ReaL top-1 50.00% over the 6 images with ReaL labels" in printed


def test_classes_the_head_cannot_score_and_bad_options_are_one_line(imagenet_head, digits_data_dir, capsys):
    """Before any image is read: a dataset whose classes are not the head's (ten digits for ImageNet's 1,000), a
    model without a head, a crop fraction outside (0, 1]."""
    import torch

    timm = import_timm()
    model, root = imagenet_head
    headless = timm.create_model("vit_base_patch16_224", pretrained=False, depth=1, embed_dim=32, num_heads=2,
                                 num_classes=0, img_size=32)
    timm.models.save_for_hf(headless, root / "headless", safe_serialization=True)
    digits = ["--dataset=sklearn_digits", f"--data-dir={digits_data_dir}"]
    for argv, message in (
            ([f"--checkpoint={root / 'hub'}", *digits], f"{root / 'hub'}'s head has 1000 classes and dataset "
                                                       f"'sklearn_digits' has 10, 10 of them not among the head's by "
                                                       f"name (e.g. '0'); score its representation on 'sklearn_digits' "
                                                       f"with python -m vit_jax.knn"),
            ([f"--checkpoint={root / 'headless'}", *digits], "has no classification head; score its representation"),
            ([f"--checkpoint={root / 'hub'}", *digits, "--crop-pct=1.5"], "--crop-pct 1.5: crop_pct must be in (0, 1]")):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == "" and captured.err.count("\n") == 1, argv
    del torch
