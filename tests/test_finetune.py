"""configs/finetune.py end to end: a digits model trained at 16x16 moved to 32x32 and to another patch size."""

import pytest

from tests.conftest import load_config_file, run_main, tiny_digits_config
from vit_jax.checkpoint.manager import CHECKPOINT_DIR, TrainCheckpoints
from vit_jax.config_validation import ConfigError
from vit_jax.metric_writers import read_metrics
from vit_jax.train import train_and_evaluate

pytestmark = pytest.mark.xdist_group("readme_run")  # the worker that runs the README's main command


@pytest.fixture(scope="module")
def digits_16(readme_run):
    """The default digits model, trained at 16x16 (patch 4, a 4x4 grid): the README main command's run."""
    workdir, result = readme_run
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def finetune(workdir, init, arg, data_dir):
    config = load_config_file("finetune", f"init={init},{arg}")
    config.data_dir = data_dir
    config.log_pictures = "none"  # drawn at each evaluation otherwise; test_predict_visualize.py tests them
    return train_and_evaluate(config, workdir)


def test_config_takes_model_and_data_from_the_workdir(digits_16):
    config = load_config_file("finetune", f"init={digits_16},res=32,patch=8,steps=7,optimizer.learning_rate=0.1")
    assert (config.model.variant, config.model.hidden_size, config.model.classifier) == ("Ti/4", 64, "gap")
    assert config.model.patch_size == (8, 8) and config.image_size == (32, 32)
    assert (config.dataset, config.eval_split, config.pp.train_crop) == ("sklearn_digits", "validation", "pad")
    assert config.num_steps == 7 and config.optimizer.learning_rate == 0.1 and config.init.path == str(digits_16)
    assert config.log_pictures == "last"  # configs/digits.py's: drawing its pictures at each evaluation is slow


@pytest.mark.slow
def test_resized_position_embeddings_beat_reinitialised_ones_at_a_new_resolution(tmp_path, digits_16,
                                                                                  digits_data_dir):
    trained = read_metrics(digits_16)[-1]["test/accuracy"]
    resized = finetune(tmp_path / "resized", digits_16, "res=32,steps=0", digits_data_dir)
    reinit = finetune(tmp_path / "reinit", digits_16, "res=32,steps=0,init.posemb=reinit", digits_data_dir)
    assert resized["test/accuracy"] > reinit["test/accuracy"] + 0.1
    same_grid = finetune(tmp_path / "patch8", digits_16, "res=32,patch=8,steps=0", digits_data_dir)
    assert same_grid["test/accuracy"] > trained - 0.05  # PI-resize: the same tokens, so nearly the same model
    assert TrainCheckpoints(tmp_path / "resized" / CHECKPOINT_DIR).all_steps() == []  # steps=0: evaluation only


@pytest.mark.slow
def test_fine_tuning_logs_the_loaded_model_at_step_0_then_improves_and_resumes_its_own_run(tmp_path, digits_16,
                                                                                          digits_data_dir):
    results = finetune(tmp_path / "ft", digits_16, "res=32,steps=40,eval_every=20,checkpoint_every=20",
                       digits_data_dir)
    evals = [(r["step"], r["eval/accuracy"]) for r in read_metrics(tmp_path / "ft") if "eval/accuracy" in r]
    assert [step for step, _ in evals] == [0, 20, 40]
    assert results["eval/accuracy"] >= evals[0][1]
    again = finetune(tmp_path / "ft", digits_16, "res=32,steps=40,eval_every=20,checkpoint_every=20",
                     digits_data_dir)  # resumes its own checkpoint (step 40), not the init
    assert again["test/accuracy"] == results["test/accuracy"]


def test_a_missing_init_is_a_config_error(tmp_path, digits_data_dir):
    config = tiny_digits_config(digits_data_dir, f"init.path={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"config.init.path = '.*nowhere': neither an .npz file nor a vit_jax workdir"):
        train_and_evaluate(config, tmp_path / "run")


def test_a_checkpoint_that_does_not_fit_fails_before_compiling_and_the_cli_says_why(tmp_path, digits_16,
                                                                                   digits_data_dir):
    result = run_main(tmp_path / "run", f"--config=configs/finetune.py:init={digits_16},steps=5",
                      f"--config.data_dir={digits_data_dir}", "--config.model.mlp_dim=96")
    assert result.returncode == 2
    assert "MlpBlock_0/Dense_0/kernel: checkpoint (64, 128), model (64, 96)" in result.stderr
    assert not (tmp_path / "run" / CHECKPOINT_DIR).exists()
