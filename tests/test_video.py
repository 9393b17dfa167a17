"""Video models end to end: the `tubelet_size` option of VisionTransformer, the config checks, configs/video.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY, load_config_file, perturbed, tiny_digits_config
from vit_jax import config_validation as cv
from vit_jax.build import set_up
from vit_jax.checkpoint.npz import save_npz
from vit_jax.checkpoint.trained_model import load_trained_model
from vit_jax.config import build_model
from vit_jax.metric_writers import read_metrics
from vit_jax.models import create_model
from vit_jax.models.vit import input_grid
from vit_jax.train import train_and_evaluate


def video_config(data_dir: str, arg: str = ""):
    config = load_config_file("video", arg)
    config.data_dir = data_dir
    return config


def param_shapes(model, input_shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))["params"]


def random_params(model, input_shape):
    return perturbed(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(model, input_shape)))


def apply(model, params, inputs):
    return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, inputs)


def test_a_video_model_has_the_image_models_parameter_names(rng):
    image = create_model("Ti/4", num_classes=4, **TINY)
    video = image.clone(tubelet_size=2)
    image_params, video_params = param_shapes(image, (8, 8, 1)), param_shapes(video, (6, 8, 8, 1))
    assert jax.tree.structure(image_params) == jax.tree.structure(video_params)
    assert video_params["embedding"]["kernel"].shape == (2, 4, 4, 1, 32)
    assert video_params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 3 * 2 * 2, 32)
    assert input_grid(video, (6, 8, 8, 1)) == (3, 2, 2) and input_grid(image, (8, 8, 1)) == (2, 2)
    reshape = video.clone(patch_embed="reshape")
    videos = rng.standard_normal((2, 6, 8, 8, 1)).astype(np.float32)
    params = random_params(video, (6, 8, 8, 1))
    np.testing.assert_allclose(apply(reshape, params, videos), apply(video, params, videos), atol=1e-4)


@pytest.mark.parametrize("posemb", ["learn", "sincos3d"])
def test_attention_spans_space_and_time(posemb, rng):
    model = create_model("Ti/4", num_classes=0, classifier="unpooled", tubelet_size=2, posemb=posemb, **TINY)
    videos = rng.standard_normal((2, 6, 8, 8, 1)).astype(np.float32)
    videos[1, 4:] += 1.0  # the second clip differs from the first in the last tubelets' frames only
    tokens = apply(model, random_params(model, (6, 8, 8, 1)), videos)  # (2, 3 * 2 * 2, D), row-major over (t, h, w)
    moved = np.abs(tokens[1] - tokens[0]).max(-1)
    assert moved[:4].min() > 1e-3  # the first frames' tokens see the change through attention


@pytest.mark.parametrize("options, message", [
    (dict(pad="zeros"), r"pad='zeros' is for images; a video model \(tubelet_size=2\)"),
    (dict(posemb="sincos2d"), r"posemb='sincos2d' is for images; a video model \(tubelet_size=2\) takes 'sincos3d'"),
    (dict(posemb="sincos3d", hidden_size=24, num_heads=4), r"sincos3d' needs hidden_size divisible by 16"),
    (dict(posemb_grid=(2, 2)), r"posemb_grid must be None or \(frames, rows, columns\) for a video model"),
    (dict(tubelet_size=0), r"tubelet_size \(frames per tubelet\) must be a positive int; got 0"),
    (dict(tubelet_size=None, posemb="sincos3d"), r"posemb='sincos3d' is the space-time table of video models"),
])
def test_video_options_that_cannot_work_fail_when_the_model_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("Ti/4", num_classes=4, **{**TINY, "tubelet_size": 2, **options})


def test_flexivit_patch_sizes_are_for_images():
    model = create_model("Ti/4", num_classes=4, tubelet_size=2, **TINY)
    with pytest.raises(ValueError, match=r"patch_size=\(2, 2\) at call time \(FlexiViT\) is for images"):
        model.init(jax.random.key(0), jnp.zeros((1, 2, 8, 8, 1)), train=False, patch_size=(2, 2))


@pytest.mark.parametrize("arg, message", [
    ("model.tubelet_size=None", r"config.model.tubelet_size = None: dataset 'moving_digits' holds videos "
                                r"\(8x16x16x1: frames x height x width x channels\) but the model is an image model; "
                                r"allowed: frames per tubelet, a divisor of 8"),
    ("model.tubelet_size=3", r"config.model.tubelet_size = 3: does not divide the 8 frames of dataset "
                             r"'moving_digits'"),
    ("log_pictures=eval", r"config.log_pictures = 'eval': TensorBoard pictures are drawn for image models"),
    ("flexi.patch_sizes=(2,4)", r"config.flexi.patch_sizes = \(2, 4\): FlexiViT patch sizes are for images"),
    ("init.inflation=middle", r"config.init.inflation = 'middle': unknown value; allowed: 'central', 'average'"),
])
def test_video_configs_that_cannot_work_fail_before_compiling(arg, message, moving_digits_data_dir):
    with pytest.raises(cv.ConfigError, match=message):
        set_up(video_config(moving_digits_data_dir, arg))


def test_a_video_model_on_images_fails_before_compiling(digits_data_dir):
    config = tiny_digits_config(digits_data_dir, "model.tubelet_size=2")
    with pytest.raises(cv.ConfigError, match=r"config.model.tubelet_size = 2: makes a video model, but dataset "
                                             r"'sklearn_digits' holds images \(8x8x1\); allowed: None for images"):
        set_up(config)


def test_set_up_inits_with_whole_clips(moving_digits_data_dir):
    setup = set_up(video_config(moving_digits_data_dir))
    assert setup.image_shape == (8, 16, 16, 1) and setup.grid == (4, 4, 4)


@pytest.mark.slow
def test_configs_video_learns_the_direction_of_motion(tmp_path, moving_digits_data_dir, digits_data_dir, capsys):
    """The run learns; its workdir then loads as a trained model (its tubelet kernel's channels, its table at the
    videos' grid): the representation the k-NN command extracts, through the head, gives the run's test accuracy;
    the commands that read image files refuse it in one line."""
    from vit_jax import knn, predict

    config = video_config(moving_digits_data_dir, "num_steps=50,optimizer.warmup_steps=20,eval_every=50,"
                                                  "checkpoint_every=50,log_every=25,model.num_layers=2")  # 99% here
    results = train_and_evaluate(config, tmp_path)
    assert results["test/num_examples"] == 1440
    assert results["test/accuracy"] > 0.8  # chance: 0.25, and no single frame tells the direction
    assert knn.main([f"--checkpoint={tmp_path}", "--k", "5", "--train-split=train[:500]", "--batch-size=512",
                     f"--features={tmp_path / 'features.npz'}"]) == 0
    assert "k-NN on moving_digits (test: 1,440 videos; neighbours from train[:500]: 500)" in capsys.readouterr().out
    trained = load_trained_model(tmp_path)
    assert trained.channels == 1
    with np.load(tmp_path / "features.npz") as features:
        logits = features["test"] @ np.asarray(trained.params["head"]["kernel"]) + trained.params["head"]["bias"]
        assert np.mean(np.argmax(logits, 1) == features["test_labels"]) == pytest.approx(results["test/accuracy"])
    with pytest.raises(SystemExit, match="2"):
        predict.main([f"--checkpoint={tmp_path}", "frame.png"])
    assert "is a video model (tubelet_size=2); this command reads image files" in capsys.readouterr().err
    assert knn.main([f"--checkpoint={tmp_path}", "--dataset=sklearn_digits", f"--data-dir={digits_data_dir}"]) == 2
    assert "is a video model and dataset 'sklearn_digits' holds images (8x8x1)" in capsys.readouterr().err


@pytest.mark.slow
def test_an_image_checkpoint_initialises_the_video_model_by_inflation(tmp_path, moving_digits_data_dir, capsys):
    config = video_config(moving_digits_data_dir, "num_steps=0,test_split=")  # evaluate the inflated model only
    image_model = build_model(config.model, num_classes=10).clone(tubelet_size=None)  # as configs/digits.py
    save_npz(random_params(image_model, (16, 16, 1)), tmp_path / "digits.npz")
    config.init.path, config.init.inflation = str(tmp_path / "digits.npz"), "average"
    results = train_and_evaluate(config, tmp_path / "video")
    notes = capsys.readouterr()
    notes = notes.out + notes.err
    assert "embedding/kernel: inflated from an image kernel to 2-frame tubelets (average)" in notes
    assert "pos_embedding: inflated from a 4x4 image grid to a 4x4x4 video grid" in notes
    assert "head/kernel: re-initialised (another number of classes)" in notes
    assert results == {} and [r["step"] for r in read_metrics(tmp_path / "video") if "eval/accuracy" in r] == [0]
