"""Bad input on the command line is one line naming the value and what was expected, exit status 2, before
anything compiles; never a traceback."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from vit_jax.checkpoint.npz import NpzError, read_npz
from vit_jax.entry import dashes_as_underscores


def random_bytes_file(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def object_array_npz(path):
    np.savez(path, **{"embedding/kernel": np.array([{"a": 1}, None], dtype=object)})
    return path


def config_file(tmp, body):
    path = tmp / "bad_config.py"
    path.write_text(f"def get_config(arg=None):\n    {body}\n")
    return path


# (command, arguments given the test's tmp_path and data dir, the one line expected on stderr)
CASES = {
    "workdir_is_a_file": (
        "main", lambda tmp, data: ["--config=configs/digits.py", f"--workdir={(tmp / 'file').touch() or tmp / 'file'}"],
        r"error: --workdir=.*/file: an existing file; expected a directory \(a new one, or a run's to resume\)"),
    "config_file_missing": (
        "main", lambda tmp, data: ["--config=configs/nope.py", f"--workdir={tmp / 'run'}"],
        r"error: --config=configs/nope.py: no such file; expected a config file, e.g. configs/digits.py"),
    "unknown_config_field": (
        "main", lambda tmp, data: ["--config=configs/digits.py", f"--workdir={tmp / 'run'}", "--config.bogus=1"],
        r"error: --config.bogus=1: unknown config field 'bogus'"),
    "unparsable_value": (
        "main", lambda tmp, data: ["--config=configs/digits.py", f"--workdir={tmp / 'run'}", "--config.num_steps=x"],
        r"error: --config.num_steps=x: invalid literal for int\(\) with base 10: 'x'"),
    "init_npz_not_a_zip": (
        "main", lambda tmp, data: [f"--config=configs/finetune.py:init={random_bytes_file(tmp / 'w.npz')},"
                                   f"variant=Ti/4,res=16", f"--config.data_dir={data}", f"--workdir={tmp / 'run'}"],
        r"error: config.init.path = '.*/w.npz': .*/w.npz: not a readable .npz file; expected a zip archive of .npy "
        r"arrays"),
    "init_npz_object_array": (
        "main", lambda tmp, data: [f"--config=configs/finetune.py:init={object_array_npz(tmp / 'o.npz')},"
                                   f"variant=Ti/4,res=16", f"--config.data_dir={data}", f"--workdir={tmp / 'run'}"],
        r"error: config.init.path = .*: array 'embedding/kernel' is an object array; object arrays are refused"),
    "workdir_empty": (
        "main", lambda tmp, data: ["--config=configs/digits.py", "--workdir="],
        r"error: --workdir is empty; expected a directory"),
    "workdir_under_a_file": (
        "main", lambda tmp, data: ["--config=configs/digits.py", f"--workdir={(tmp / 'f').touch() or tmp / 'f'}/run"],
        r"error: --workdir=.*/f/run: cannot be written \(.*/f is not a directory\)"),
    "config_argument_not_a_field": (  # ml-collections' message holds the config file's traceback: its last line
        "main", lambda tmp, data: ["--config=configs/digits.py:bogus=1", f"--workdir={tmp / 'run'}"],
        r"error: --config=configs/digits.py:bogus=1: Error whilst parsing config file: ValueError: unknown config "
        r"field 'bogus'"),
    "config_file_raises": (
        "main", lambda tmp, data: ["--config=" + str(config_file(tmp, "raise RuntimeError('boom')")),
                                   f"--workdir={tmp / 'run'}"],
        r"error: --config=.*/bad_config.py: .*RuntimeError: boom"),
    "config_returns_none": (  # a missing return: ml-collections calls it an unknown field or a missing --config
        "main", lambda tmp, data: ["--config=" + str(config_file(tmp, "pass")), f"--workdir={tmp / 'run'}",
                                   "--config.num_steps=3"],
        r"error: --config=.*/bad_config.py: get_config returned None \(a missing return\?\)"),
    "finetune_without_init": (
        "main", lambda tmp, data: ["--config=configs/finetune.py:variant=Ti/4,res=16", f"--workdir={tmp / 'run'}"],
        r"error: --config=configs/finetune.py:variant=Ti/4,res=16: .*init= is missing"),
    "npz_export_out_is_a_directory": (  # checked before the checkpoint is read
        "checkpoint.npz", lambda tmp, data: [f"--workdir={tmp / 'run'}", f"--out={tmp}"],
        r"error: --out=.*: an existing directory; expected a file path"),
    "visualize_out_under_a_file": (
        "visualize", lambda tmp, data: ["--npz=model.npz", "--image=x.png",
                                        f"--out={(tmp / 'f').touch() or tmp / 'f'}/pictures"],
        r"error: --out=.*/f/pictures: cannot be written \(.*/f is not a directory\)"),
    "sweep_bad_xla_flag": (  # the sweep starts its process as main does: XLA flags checked before XLA sees them
        "sweep", lambda tmp, data: ["--config=configs/sweeps/patch_size.py", f"--workdir={tmp / 'sweep'}",
                                    "--config.xla_flags=--not_a_flag"],
        r"error: config.xla_flags = '--not_a_flag': is not an XLA flag"),
    "sweep_bad_base_config": (  # checked for every point before the first trains, not recorded as 8 failures
        "sweep", lambda tmp, data: ["--config=configs/sweeps/patch_size.py", f"--workdir={tmp / 'sweep'}",
                                    "--config.optimizer.name=adam"],
        r"error: sweep point 0 \(.*\): config.optimizer.name = 'adam': unknown value"),
    "sweep_point_out_of_range": (
        "sweep", lambda tmp, data: ["--config=configs/sweeps/patch_size.py", f"--workdir={tmp / 'sweep'}",
                                    "--point=99"],
        r"error: --point=99: no such point; expected 0\.\.7 \(the sweep has 8 points\)"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, digits_data_dir):
    """case -> (its directory, {"returncode", "stderr"}): every case's command line run in a fork of one process
    that imported vit_jax once (tests/forked_commands.py), not in an interpreter of its own each."""
    directories = {case: tmp_path_factory.mktemp(case) for case in CASES}
    commands = [[f"vit_jax.{command}", arguments(directories[case], digits_data_dir)]
                for case, (command, arguments, _) in CASES.items()]
    result = subprocess.run([sys.executable, "-m", "tests.forked_commands"], input=json.dumps(commands), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(CASES, zip(directories.values(), json.loads(result.stdout))))


@pytest.mark.xdist_group("bad_command_lines")
@pytest.mark.parametrize("case", CASES)
def test_bad_command_lines_are_one_line_and_exit_status_2(case, outcomes):
    directory, outcome = outcomes[case]
    stderr = outcome["stderr"]
    assert outcome["returncode"] == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(CASES[case][2] + ".*", last), last
    assert not (directory / "run" / "checkpoints").exists() and not (directory / "sweep").exists()


@pytest.mark.xdist_group("bad_command_lines")
def test_a_forked_command_line_ends_as_in_an_interpreter_of_its_own(outcomes, tmp_path):
    """The harness's fork gives what `python -m` gives: the same status and the same stderr."""
    directory, forked = outcomes["unknown_config_field"]
    command, arguments, _ = CASES["unknown_config_field"]
    fresh = subprocess.run([sys.executable, "-m", f"vit_jax.{command}", *arguments(directory, "")], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert (fresh.returncode, fresh.stderr) == (forked["returncode"], forked["stderr"])


def test_a_plain_npy_array_is_not_taken_for_an_npz(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(NpzError, match=r"one.npy: a single .npy array, not an .npz archive"):
        read_npz(tmp_path / "one.npy")


def test_multi_word_flags_take_dashes_and_keep_their_underscore_spelling():
    names = {"coordinator_address", "num_processes", "workdir", "config"}
    argv = ["main", "--coordinator-address=127.0.0.1:5", "--num_processes=2", "--num-processes", "3",
            "--config.model.qkv_dim=8", "--config=configs/digits.py:model.posemb_grid=(2,2)", "--unknown-flag=1"]
    assert dashes_as_underscores(argv, names) == [
        "main", "--coordinator_address=127.0.0.1:5", "--num_processes=2", "--num_processes", "3",
        "--config.model.qkv_dim=8", "--config=configs/digits.py:model.posemb_grid=(2,2)", "--unknown-flag=1"]


def test_an_existing_output_is_replaced_not_refused(tmp_path):
    """A command run again with the same `--out` replaces its earlier result (it used to be refused as 'not a
    directory', the file itself taken for the folder it is written in)."""
    from vit_jax.entry import check_output

    (tmp_path / "result.json").write_text("{}")
    (tmp_path / "export").mkdir()
    assert check_output(tmp_path / "result.json", "--out") == tmp_path / "result.json"
    assert check_output(tmp_path / "export", "--out", directory=True) == tmp_path / "export"
    assert check_output(tmp_path / "new" / "deeper.json", "--out") == tmp_path / "new" / "deeper.json"
