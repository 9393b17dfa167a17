"""`python -m vit_jax.predict` and `python -m vit_jax.visualize` on a digits run and on .npz files."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.conftest import live_params, tiny_digits_config
from tests.numpy_reference import vit_forward
from tests.tensorboard_events import tensorboard_images
from vit_jax import predict, visualize
from vit_jax.checkpoint.npz import save_npz
from vit_jax.checkpoint.trained_model import architecture_of, load_trained_model
from vit_jax.config import saved_config
from vit_jax.data.sources import dataset_builder, open_split
from vit_jax.interpret.figures import rgb_array
from vit_jax.models import create_model
from vit_jax.train import train_and_evaluate

pytestmark = pytest.mark.xdist_group("digits_run")  # one worker builds the module's digits run

PICTURES = ("posemb_similarity", "patch_filters", "patch_grid", "attention_maps", "attention_rollout",
            "mean_attention_distance")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_data_dir):
    """A 20-step digits run that logs pictures at both evaluations, and four test images as PNG files."""
    workdir = tmp_path_factory.mktemp("digits_run")
    train_and_evaluate(tiny_digits_config(digits_data_dir, "log_pictures=eval,pictures_images=4"), workdir)
    source = open_split(dataset_builder("sklearn_digits", digits_data_dir), "test")
    paths = []
    for i in range(4):
        path = workdir / f"test{i}.png"
        Image.fromarray(source[i]["image"][:, :, 0]).save(path)
        paths.append(str(path))
    return workdir, paths, [source[i] for i in range(4)]


def test_training_logs_every_picture_to_tensorboard_at_each_evaluation(digits_run):
    workdir, _, _ = digits_run
    images = tensorboard_images(workdir)
    assert sorted(images) == sorted(f"pictures/{name}" for name in PICTURES)
    for name in PICTURES:
        steps = [step for step, _ in images[f"pictures/{name}"]]
        assert steps == [10, 20], name
        picture = images[f"pictures/{name}"][-1][1]
        assert picture.ndim == 3 and min(picture.shape[:2]) > 100 and picture.std() > 10  # drawn, not blank


def test_predict_prints_top_k_with_the_evaluation_preprocessing(digits_run, capsys):
    workdir, paths, examples = digits_run
    assert predict.main([f"--workdir={workdir}", "--top-k=3", *paths]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 * 4  # a path line and three class lines per image
    trained = load_trained_model(workdir)
    assert trained.class_names == tuple(str(i) for i in range(10))  # from the dataset's metadata
    batch = np.stack([trained.preprocess.eval(e)["image"] for e in examples])
    logits = trained.model.apply({"params": trained.params}, batch, train=False)
    expected = np.asarray(jax.nn.softmax(logits, axis=-1))
    for i, path in enumerate(paths):
        block = out[4 * i: 4 * i + 4]
        assert block[0] == path
        printed = [(line.split()[1], float(line.split()[0].rstrip("%")) / 100) for line in block[1:]]
        order = np.argsort(-expected[i])[:3]
        assert [name for name, _ in printed] == [str(c) for c in order]
        np.testing.assert_allclose([p for _, p in printed], expected[i][order], atol=5e-5)


def test_bad_files_are_reported_one_by_one_and_the_rest_predicted(digits_run, capsys, tmp_path):
    workdir, paths, _ = digits_run
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert predict.main([f"--workdir={workdir}", "--json", paths[0], str(tmp_path / "missing.png"), str(text),
                         paths[1]]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("top_k" in r, "error" in r) for r in records] == [(True, False), (False, True), (False, True),
                                                             (True, False)]
    assert "missing.png': no such file" in records[1]["error"]
    assert "notes.png': not an image format PIL can decode" in records[2]["error"]


def test_an_exported_npz_predicts_the_same_with_its_architecture_read_from_shapes(digits_run, capsys, tmp_path):
    workdir, paths, _ = digits_run
    trained = load_trained_model(workdir)
    npz = tmp_path / "digits.npz"
    save_npz(trained.params, npz)
    assert architecture_of(trained.params) == dict(
        num_classes=10, patch_size=(4, 4), hidden_size=64, num_layers=2, mlp_dim=128, num_heads=4,
        classifier="gap", representation_size=None, final_norm=True, fc_norm=False)
    predict.main([f"--workdir={workdir}", "--json", *paths])
    from_workdir = capsys.readouterr().out
    predict.main([f"--npz={npz}", "--dataset=sklearn_digits", f"--data-dir={trained_data_dir(workdir)}", "--json",
                  *paths])
    assert capsys.readouterr().out == from_workdir
    with pytest.raises(SystemExit) as exit_info:
        predict.main([f"--npz={npz}", "--variant=Ti/4", paths[0]])
    assert exit_info.value.code == 2
    assert "--variant Ti/4 does not match" in capsys.readouterr().err


def trained_data_dir(workdir):
    return saved_config(workdir).data_dir


def test_visualize_writes_every_picture_for_a_workdir(digits_run, tmp_path, capsys):
    workdir, paths, _ = digits_run
    out = tmp_path / "pictures"
    assert visualize.main([f"--workdir={workdir}", f"--image={paths[0]}", f"--image={paths[1]}", f"--out={out}"]) == 0
    for name in PICTURES:
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
    arrays = np.load(out / "pictures.npz", allow_pickle=False)
    assert arrays["posemb_similarity"].shape == (4, 4, 4, 4)
    assert arrays["attention_weights"].shape == (2, 2, 4, 16, 16)  # layers, images, heads, tokens, tokens
    assert arrays["mean_attention_distance"].shape == (2, 4)
    assert arrays["filter_components"].shape == (16, 4, 4, 1)  # 4x4x1 filters span 16 dimensions


def _hand_built_npz(tmp_path):
    """A 2-layer, 8-wide model on 8x8 RGB images with patch 2 (a 4x4 grid) whose position table is
    onehot(row) ++ onehot(column): the similarity map is known."""
    model = create_model("Ti/2", num_classes=3, hidden_size=8, num_layers=2, mlp_dim=16, num_heads=2)
    images = jnp.zeros((1, 8, 8, 3))
    params = live_params(model, images)
    table = [np.full(8, 0.3)] + [np.concatenate([np.eye(4)[i], np.eye(4)[j]]) for i in range(4) for j in range(4)]
    params["Transformer"]["posembed_input"]["pos_embedding"] = np.stack(table)[None].astype(np.float32)
    path = tmp_path / "hand.npz"
    save_npz(params, path)
    return path, params


def test_visualize_an_npz_gives_the_known_similarity_and_the_reference_attention(tmp_path):
    npz, params = _hand_built_npz(tmp_path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    out = tmp_path / "pictures"
    assert visualize.main([f"--npz={npz}", f"--image={tmp_path / 'image.png'}", f"--out={out}"]) == 0
    arrays = np.load(out / "pictures.npz", allow_pickle=False)

    i, j, k, l = np.meshgrid(*[range(4)] * 4, indexing="ij")
    np.testing.assert_allclose(arrays["posemb_similarity"], ((i == k) * 1.0 + (j == l)) / 2, atol=1e-6)

    pixels = image.astype(np.float32)[None] / 127.5 - 1  # value range -1..1, no resize at 8x8
    reference = []
    vit_forward(params, pixels, record_attention=reference)
    np.testing.assert_allclose(arrays["attention_weights"][:, 0], np.stack(reference)[:, 0], rtol=1e-4, atol=1e-6)

    # mean attention distance by its definition, from the reference weights: patch centres 2 px apart
    centres = np.array([(2 * r + 1, 2 * c + 1) for r in range(4) for c in range(4)], float)
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    patch_weights = np.stack(reference)[:, 0, :, 1:, 1:]
    patch_weights = patch_weights / patch_weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(arrays["mean_attention_distance"], (patch_weights * distance).sum(-1).mean(-1),
                               rtol=1e-4)
    assert arrays["filter_components"].shape == (8, 2, 2, 3)  # 8 filters: at most 8 components
    np.testing.assert_allclose(np.linalg.norm(arrays["filter_components"].reshape(8, -1), axis=1), 1.0, rtol=1e-6)
    assert math.isclose(arrays["attention_rollout"].sum(-1).mean(), 1.0, rel_tol=1e-6)


def test_visualize_refuses_a_missing_image_before_drawing(tmp_path, capsys):
    npz, _ = _hand_built_npz(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        visualize.main([f"--npz={npz}", f"--image={tmp_path / 'nope.png'}", f"--out={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    assert "nope.png': no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_figures_render_to_rgb_arrays_for_tensorboard(tmp_path):
    from vit_jax.interpret.figures import posemb_similarity_figure
    array = rgb_array(posemb_similarity_figure(np.eye(4).reshape(2, 2, 2, 2)))
    assert array.dtype == np.uint8 and array.shape[2] == 3 and array.shape[0] > 100


@pytest.mark.parametrize("source, options, message", [
    (dict(workdir="nowhere"), dict(variant="B/16", dataset="mnist"), "variant, dataset: not used with a workdir"),
    (dict(npz="nowhere.npz"), dict(step=3), "step: not used with an .npz file"),
    (dict(checkpoint="hf-hub:timm/nothing"), dict(step=2, value_range=(0.0, 1.0)),
     "step, value_range: not used with a timm checkpoint"),
])
def test_options_a_checkpoint_kind_does_not_read_are_refused_before_loading(source, options, message):
    """predict --workdir=W --variant=B/16 used to ignore the variant silently."""
    with pytest.raises(ValueError, match=message):
        load_trained_model(**source, **options)


def test_a_workdir_predicts_with_the_evaluation_view_it_was_evaluated_with(digits_run, tmp_path):
    """A run evaluated on the central crop (`pp.crop_pct`, `pp.crop_mode`) is predicted on the same view."""
    import json
    import shutil

    workdir, _, _ = digits_run
    cropped = tmp_path / "cropped"
    shutil.copytree(workdir, cropped)
    config = json.loads((cropped / "config.json").read_text())
    config["pp"].update(crop_pct=0.875, crop_mode="center")
    (cropped / "config.json").write_text(json.dumps(config))
    preprocess = load_trained_model(cropped).preprocess
    assert (preprocess.crop_pct, preprocess.crop_mode) == (0.875, "center")
    assert load_trained_model(workdir).preprocess.crop_pct == 1.0


def test_predict_at_another_image_size_resizes_the_table_as_training_would(digits_run, capsys):
    """`--image-size` feeds any checkpoint at a new size (its table resized in the forward pass), in every form,
    and the images after it are still images (an option taking one or two values used to swallow them)."""
    import dataclasses

    workdir, paths, examples = digits_run
    outputs = []
    for size_args in (["--image-size", "24", *paths[:2]], [*paths[:2], "--image-size=24x24"],
                      ["--image-size", "24", "24", *paths[:2]]):
        assert predict.main([f"--workdir={workdir}", "--json", "--top-k=10", *size_args]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    records = [json.loads(line) for line in outputs[0].splitlines()]
    assert [r["path"] for r in records] == paths[:2]
    # reference: the 4x4 table resized once to 6x6 (half-pixel bilinear), in a model built for the 6x6 grid
    trained = load_trained_model(workdir)
    table = trained.params["Transformer"]["posembed_input"]["pos_embedding"]
    resized = jax.image.resize(table.reshape(4, 4, -1), (6, 6, table.shape[-1]), "bilinear").reshape(1, 36, -1)
    params = jax.tree.map(lambda x: x, trained.params)
    params["Transformer"]["posembed_input"]["pos_embedding"] = resized
    view = dataclasses.replace(trained.preprocess, image_size=(24, 24))
    batch = np.stack([view.eval(e)["image"] for e in examples[:2]])
    assert batch.shape[1:3] == (24, 24)
    logits = trained.model.clone(posemb_grid=None).apply({"params": params}, batch, train=False)
    expected = np.asarray(jax.nn.softmax(logits, axis=-1))
    for record, row in zip(records, expected):
        printed = dict(record["top_k"])
        np.testing.assert_allclose([printed[str(c)] for c in range(10)], row, atol=5e-5)
    for bad, message in ((["--image-size", "23", paths[0]], "image size 23x23 (height x width) is not a multiple of "
                                                            "the patch size 4x4"),
                         (["--image-size", "0", paths[0]], "--image-size 0: expected N, HxW or H W"),
                         (["--image-size", "24"], "the following arguments are required: IMAGE")):
        with pytest.raises(SystemExit) as exit_info:
            predict.main([f"--workdir={workdir}", *bad])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_a_factorized_tables_workdir_runs_at_another_size(tmp_path, digits_data_dir):
    """A run's row and column tables (NaViT's factorized embeddings) are stored at its training grid and each
    resized along its own axis at another size; a workdir used to load with tables sized by the input's grid, so
    any other size failed on the parameters' shapes."""
    workdir = tmp_path / "factorized"
    train_and_evaluate(tiny_digits_config(digits_data_dir, "num_steps=2,eval_every=2,checkpoint_every=2,"
                                                           "model.posemb=factorized"), workdir)
    trained = load_trained_model(workdir, image_size=24)
    assert trained.image_size == (24, 24) and trained.model.posemb_grid == (4, 4)
    source = open_split(dataset_builder("sklearn_digits", digits_data_dir), "test")
    batch = np.stack([trained.preprocess.eval(source[i])["image"] for i in range(3)])
    embeddings = trained.params["Transformer"]["posembed_input"]
    resized = {name: jax.image.resize(embeddings[name], (6, embeddings[name].shape[1]), "bilinear")
               for name in ("pos_embedding_row", "pos_embedding_col")}
    params = {**trained.params, "Transformer": {**trained.params["Transformer"], "posembed_input": resized}}
    expected = trained.model.clone(posemb_grid=None).apply({"params": params}, batch, train=False)
    np.testing.assert_allclose(trained.model.apply({"params": trained.params}, batch, train=False), expected,
                               atol=1e-5)
