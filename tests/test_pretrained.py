import numpy as np
import pytest

from tests.conftest import tiny_digits_config
from vit_jax.checkpoint.npz import load_npz
from vit_jax.checkpoint.npz import main as export_main
from vit_jax.checkpoint.pretrained import load_pretrained
from vit_jax.train import train_and_evaluate

pytestmark = pytest.mark.xdist_group("pretrained_run")  # one worker builds the module fixture


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, digits_data_dir):
    workdir = tmp_path_factory.mktemp("trained")
    train_and_evaluate(tiny_digits_config(digits_data_dir, "image_size=(16,12),num_steps=10"), workdir)
    return workdir


def test_a_workdir_gives_its_parameters_and_the_grid_they_were_trained_for(trained_workdir):
    pretrained = load_pretrained(trained_workdir)
    assert pretrained.grid == (4, 3)
    assert pretrained.params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 4 * 3, 64)  # gap: no cls
    earlier = load_pretrained(trained_workdir, step=5)
    assert "step 5" in earlier.source
    assert not np.array_equal(earlier.params["head"]["kernel"], pretrained.params["head"]["kernel"])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 7 in .*; steps: \[5, 10\]"):
        load_pretrained(trained_workdir, step=7)


def test_export_writes_an_npz_that_loads_back(trained_workdir, tmp_path, capsys):
    assert export_main(["--workdir", str(trained_workdir), "--out", str(tmp_path / "run.npz")]) == 0
    assert "step 10" in capsys.readouterr().out
    exported = load_pretrained(tmp_path / "run.npz")
    assert exported.grid is None  # an .npz does not say; square grids are inferred, others given in config.init.grid
    np.testing.assert_array_equal(load_npz(tmp_path / "run.npz")["embedding"]["kernel"],
                                  load_pretrained(trained_workdir).params["embedding"]["kernel"])


def test_a_path_that_is_neither_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an .npz file nor a vit_jax workdir"):
        load_pretrained(tmp_path / "nothing")
