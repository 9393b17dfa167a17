"""Shared helpers: perturbed parameters (nothing hides behind a zero init), configs, the digits data, `main` runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Many tests compile the same small programs (the tiny digits run's steps), in this process and in the `main`
# processes they start: XLA's persistent compilation cache, shared by the xdist workers and inherited by
# subprocesses through the environment, compiles each once per machine. Keys cover the program, the flags and
# the jax version, so a cached executable is the one a fresh compile would give.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Tests compile hundreds of small programs and run each for a few steps, so compiling is most of their time. XLA's
# backend optimization level only sets how hard LLVM optimises the generated kernels (the HLO passes, fusion and
# the library products are the same, and so are the results the tests check): at level 1 the tiny ViT's init
# compiled in 2.2 s against 3.8 s at the default 2, and at level 0 the whole suite took 6 min 04 s against 7 min 51 s
# at level 1 (the same commit and machine, an AMD Zen 4, 2026-12-06). Set before jax starts, so every test process
# and subprocess uses it; the README's main command runs with the user's defaults (`run_main(...,
# env=USER_XLA_FLAGS)`).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0",)
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *TEST_XLA_FLAGS]).strip()
USER_XLA_FLAGS = {"XLA_FLAGS": ""}

import jax  # noqa: E402  (after the cache settings it reads)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def perturbed(params: Any, seed: int = 0, scale: float = 0.2) -> Any:
    """`params` plus Gaussian noise on every leaf: zero-initialised heads, biases and class tokens come alive."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    noisy = [np.asarray(leaf) + scale * rng.standard_normal(np.shape(leaf)).astype(np.float32) for leaf in leaves]
    return jax.tree.unflatten(treedef, noisy)


def live_params(model: Any, *inputs: Any, seed: int = 0) -> Any:
    """`model`'s parameters initialised on `inputs` (inference mode), then `perturbed`."""
    return perturbed(model.init(jax.random.key(seed), *inputs, train=False)["params"], seed=seed)


# The tiny ViT most model tests build: fast to trace, every part present.
TINY = dict(hidden_size=32, num_layers=2, mlp_dim=64, num_heads=4)
# Smaller still, for tests of shapes and wiring: one block of width 16.
MINI = dict(hidden_size=16, num_layers=1, mlp_dim=32, num_heads=2)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def load_config_file(name: str, arg: str | None = None):
    """`get_config(arg)` of `configs/<name>.py`, loaded by path as `--config=configs/<name>.py:arg` does."""
    from vit_jax.config import load_config_file as load_by_path

    return load_by_path(ROOT / "configs" / f"{name}.py", arg)


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding the prepared `sklearn_digits` dataset (built once per test session)."""
    from vit_jax.data.sources import dataset_builder

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    dataset_builder("sklearn_digits", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def moving_digits_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding the prepared `moving_digits` video dataset (built once per test session)."""
    from vit_jax.data.sources import dataset_builder

    data_dir = str(tmp_path_factory.mktemp("tfds_video"))
    dataset_builder("moving_digits", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory, digits_data_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's main command (configs/digits.py, 1,200 steps), run once: its test checks the output, and its
    workdir is the trained model the fine-tuning tests start from. Tests using it share the xdist group
    `readme_run`, so one worker runs it."""
    workdir = tmp_path_factory.mktemp("readme_run")
    return workdir, run_main(workdir, "--config=configs/digits.py", f"--config.data_dir={digits_data_dir}",
                             env=USER_XLA_FLAGS, timeout=900)


# batch 128: the tiny runs' assertions (which checkpoints are kept, accuracies after a few hundred steps) were set
# at configs/digits.py's earlier batch size.
TINY_RUN = ("num_steps=20,batch_size=128,log_every=5,eval_every=10,checkpoint_every=5,log_pictures=none,"
            "model.num_layers=2")


def tiny_digits_config(data_dir: str, arg: str = ""):
    """configs/digits.py, shortened for tests: few steps, frequent logs, evals and checkpoints."""
    config = load_config_file("digits", ",".join(filter(None, [TINY_RUN, arg])))
    config.data_dir = data_dir
    return config


def xla_env(*flags: str) -> dict[str, str]:
    """A subprocess environment with the tests' XLA flags plus `flags` (e.g. a forced device count)."""
    return {**os.environ, "XLA_FLAGS": " ".join([os.environ["XLA_FLAGS"], *flags])}


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, for a multi-process run's coordinator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_main(workdir, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m vit_jax.main --workdir=workdir ...` in a fresh process (its own devices and flags)."""
    command = [sys.executable, "-m", "vit_jax.main", f"--workdir={workdir}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def write_hub_cache(home, repo_id, files):
    """huggingface_hub's cache layout under HF_HOME: refs/main -> a snapshot holding `files`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache (returned: its HF_HOME) that huggingface_hub reads offline, for `hf-hub:` specs."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf"
