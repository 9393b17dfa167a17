"""`python -m vit_jax.soup`: uniform and greedy model soups of the README run's checkpoints, against the mean of
their parameters and against `python -m vit_jax.evaluate`'s held-out figures deciding the greedy recipe."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from vit_jax.checkpoint.trained_model import load_trained_model
from vit_jax.evaluate import main as evaluate
from vit_jax.soup import main


def flat(params):
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, params), sep="/")


@pytest.mark.xdist_group("readme_run")  # the worker that runs the README's main command
def test_soups_of_the_readme_runs_checkpoints(readme_run, capsys, tmp_path):
    """The uniform soup's parameters are the mean of the ingredients'; the greedy soup keeps the second-best
    checkpoint exactly when the two-checkpoint soup is at least as accurate on the validation split as the best
    one alone (the checkpoints' figures as the run logged them, the soup's from `evaluate` on the written soup)."""
    workdir, _ = readme_run
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-2:]
    assert len(steps) == 2
    specs = [f"{workdir}@{step}" for step in steps]
    assert main(["--checkpoints", *specs, f"--out={tmp_path / 'uniform'}"]) == 0
    soup = flat(load_trained_model(tmp_path / "uniform").params)
    ingredients = [flat(load_trained_model(workdir, step=step).params) for step in steps]
    assert soup.keys() == ingredients[0].keys()
    for name, value in soup.items():
        np.testing.assert_allclose(value, (ingredients[0][name] + ingredients[1][name]) / 2, atol=1e-6, err_msg=name)

    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    accuracy = {m["step"]: m["eval/accuracy"] for m in logged if "eval/accuracy" in m and m["step"] in steps}
    data_dir = json.loads((workdir / "config.json").read_text())["data_dir"]
    assert evaluate([f"--checkpoint={tmp_path / 'uniform'}", "--dataset=sklearn_digits", f"--data-dir={data_dir}",
                     "--split=validation", f"--out={tmp_path / 'eval.json'}"]) == 0
    accuracy["soup"] = json.loads((tmp_path / "eval.json").read_text())["top1"]
    capsys.readouterr()
    best, second = sorted(steps, key=lambda step: -accuracy[step])
    assert main(["--checkpoints", *specs, "--greedy", f"--out={tmp_path / 'greedy'}"]) == 0
    printed = capsys.readouterr().out
    kept = accuracy["soup"] >= accuracy[best]
    assert f"{'kept' if kept else 'left out'} {workdir}@{second}: the soup with it {accuracy['soup']:.2%}" in printed
    greedy = flat(load_trained_model(tmp_path / "greedy").params)
    expected = soup if kept else ingredients[steps.index(best)]
    for name, value in greedy.items():
        np.testing.assert_allclose(value, expected[name], atol=1e-6, err_msg=name)


def test_what_cannot_be_a_soup_is_one_line_before_anything_is_written(tmp_path, capsys):
    from vit_jax.checkpoint.npz import save_npz
    from vit_jax.models import create_model

    for width, name in ((32, "a.npz"), (32, "b.npz"), (48, "c.npz")):
        model = create_model("Ti/4", num_classes=3, hidden_size=width, num_layers=1, mlp_dim=64, num_heads=2)
        params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32), train=False)["params"]
        save_npz(params, tmp_path / name)
    for argv, message in (
            ([str(tmp_path / "a.npz")], "--checkpoints: 1 given; a soup averages two or more"),
            ([str(tmp_path / "a.npz"), str(tmp_path / "c.npz")], "differ at Transformer/encoder_norm/bias ((48,) vs "
                                                                 "(32,)): a soup averages checkpoints of one "
                                                                 "architecture"),
            ([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--split=validation"], "--dataset / --split: used by "
                                                                                        "--greedy only")):
        assert main(["--checkpoints", *argv, f"--out={tmp_path / 'soup'}"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "soup").exists()
