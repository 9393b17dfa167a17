"""Distillation (vit_jax.distillation): the teacher sees the student's images as its own evaluation makes pixels,
the train step's loss is DeiT's `DistillationLoss` (its PyTorch lines, inline), and a run distils from the README
run's workdir end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import MINI, live_params, perturbed, tiny_digits_config
from vit_jax.build import set_up
from vit_jax.checkpoint.npz import save_npz
from vit_jax.checkpoint.timm_layout import IMAGENET_MEAN, IMAGENET_STD
from vit_jax.config_validation import ConfigError
from vit_jax.data.preprocessing import Preprocess
from vit_jax.distillation import Distillation, input_conversion
from vit_jax.models import create_model
from vit_jax.steps import TrainState, make_train_step
from vit_jax.train import train_and_evaluate


def distillation(teacher=None, kind="hard", alpha=0.5, tau=1.0, student=None, teacher_pp=None, channels=3,
                 image_size=(8, 8)):
    student = student or Preprocess(image_size=(16, 16))
    teacher_pp = teacher_pp or Preprocess(image_size=image_size)
    scale, offset = input_conversion(student, teacher_pp)
    return Distillation(teacher=teacher, kind=kind, alpha=alpha, tau=tau, scale=scale, offset=offset,
                        channels=channels, image_size=image_size, resize_method="linear")


def test_the_teacher_sees_the_pixels_its_own_evaluation_makes(rng):
    """A grayscale student in [0, 1] at 16x16; an RGB teacher with ImageNet's mean and std at 12x12."""
    pixels = rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    student = Preprocess(image_size=(16, 16), value_range=(0.0, 1.0))
    teacher = Preprocess(image_size=(12, 12), value_range=(0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    conversion = distillation(student=student, teacher_pp=teacher, image_size=(12, 12))
    got = conversion.teacher_inputs(jnp.asarray(student.pixels(pixels)))
    expected = jax.image.resize(teacher.pixels(np.repeat(pixels, 3, axis=-1)), (3, 12, 12, 3), "linear",
                                antialias=True)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("classifier, kind, tau", [("token_distilled", "hard", 1.0), ("gap", "soft", 2.0)])
def test_the_train_steps_loss_is_deits_distillation_loss(classifier, kind, tau, rng):
    """DeiT's losses.py on the heads' logits (the class token's head on the smoothed labels, the distillation
    token's on the teacher; a one-head student's head on both) and the teacher's logits on its own pixels."""
    import torch
    import torch.nn.functional as F

    student = create_model("Ti/4", num_classes=5, classifier=classifier, **MINI)
    teacher = create_model("Ti/4", num_classes=5, classifier="token", hidden_size=24, num_layers=1, mlp_dim=32,
                           num_heads=2)
    images = rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    labels = np.array([0, 3, 4, 1])
    params = live_params(student, images)
    teacher_params = perturbed(teacher.init(jax.random.key(1), images[:, :8, :8], train=False)["params"], 1, 0.5)
    conversion = distillation(teacher, kind=kind, alpha=0.3, tau=tau,
                              teacher_pp=Preprocess(image_size=(8, 8), value_range=(0.0, 1.0)))
    tx = optax.sgd(0.0)
    step = jax.jit(make_train_step(student, tx, optax.constant_schedule(0.0), dropout_key=jax.random.key(0),
                                   label_smoothing=0.1, distillation=conversion), static_argnums=(2,))
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    _, metrics = step(state, {"image": jnp.asarray(images), "label": jnp.asarray(labels)}, None, teacher_params)

    _, captured = student.apply({"params": params}, images, train=False, capture_intermediates=True)
    heads = [np.array(captured["intermediates"][name]["__call__"][0])
             for name in (("head", "head_dist") if classifier == "token_distilled" else ("head", "head"))]
    teacher_images = jax.image.resize((images + 1) / 2, (4, 8, 8, 3), "linear", antialias=True)  # [-1,1] -> [0,1]
    teacher_outputs = torch.from_numpy(np.array(teacher.apply({"params": teacher_params}, teacher_images,
                                                                train=False)))
    outputs, outputs_kd = (torch.from_numpy(h) for h in heads)
    base_loss = F.cross_entropy(outputs, torch.from_numpy(labels), label_smoothing=0.1)
    if kind == "soft":  # facebookresearch/deit losses.py, DistillationLoss.forward
        T = tau
        distillation_loss = F.kl_div(F.log_softmax(outputs_kd / T, dim=1), F.log_softmax(teacher_outputs / T, dim=1),
                                     reduction='sum', log_target=True) * (T * T) / outputs_kd.numel()
    else:
        distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
    loss = base_loss * (1 - 0.3) + distillation_loss * 0.3
    assert float(metrics["train/loss"]) == pytest.approx(float(loss), rel=2e-5)
    assert float(metrics["train/distillation_loss"]) == pytest.approx(float(distillation_loss), rel=2e-5)
    assert float(metrics["train/teacher_accuracy"]) == np.mean(teacher_outputs.argmax(dim=1).numpy() == labels)
    assert float(distillation_loss) > 0.01


@pytest.mark.xdist_group("readme_run")  # the worker that runs the README's main command
def test_a_run_distils_from_a_workdir_and_a_teacher_of_other_classes_is_refused(tmp_path, readme_run,
                                                                                 digits_data_dir):
    """DeiT's distilled student (class and distillation tokens) learns from the README run's model; the teacher
    agrees with the labels on the training batches as its test accuracy says. A teacher trained on 3 classes is
    a ConfigError naming both counts, before anything compiles."""
    teacher_workdir, result = readme_run
    assert result.returncode == 0, result.stderr[-2000:]
    config = tiny_digits_config(digits_data_dir, f"model.classifier=token_distilled,num_steps=10,eval_every=10,"
                                                 f"checkpoint_every=10,model.num_layers=1,model.hidden_size=32,"
                                                 f"model.mlp_dim=64,distillation.teacher={teacher_workdir}")
    results = train_and_evaluate(config, tmp_path / "student")
    logged = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    teacher_accuracy = [m["train/teacher_accuracy"] for m in logged if "train/teacher_accuracy" in m]
    assert len(teacher_accuracy) == 2 and min(teacher_accuracy) > 0.95  # logged every 5 of 10 steps
    assert all(np.isfinite(m["train/distillation_loss"]) for m in logged if "train/distillation_loss" in m)
    assert results["test/accuracy"] > 0.15  # 10 steps

    other = create_model("Ti/4", num_classes=3, **MINI)
    save_npz(other.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)["params"], tmp_path / "t.npz")
    config.distillation.teacher = str(tmp_path / "t.npz")
    with pytest.raises(ConfigError, match=r"config.distillation.teacher = '.*t.npz': .*t.npz predicts 3 classes; "
                                          r"the dataset has 10"):
        set_up(config)
