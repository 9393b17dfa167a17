import os
import subprocess
import sys

import pytest

from vit_jax.config import base_config
from vit_jax.config_validation import ConfigError, check_xla_flags
from vit_jax.xla_flags import YNN_FUSIONS, apply_xla_flags, default_xla_flags, with_defaults


def test_defaults_are_added_without_overriding_what_the_user_set():
    assert with_defaults("", (f"{YNN_FUSIONS}=",)) == f"{YNN_FUSIONS}="
    user = f"--xla_force_host_platform_device_count=8 {YNN_FUSIONS}=dot"
    assert with_defaults(user, (f"{YNN_FUSIONS}=",)) == user


def test_auto_takes_the_dtype_defaults_and_a_string_takes_exactly_its_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    assert apply_xla_flags("auto", "float32") == " ".join(default_xla_flags("float32"))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert apply_xla_flags("auto", "bfloat16") == " ".join(default_xla_flags("bfloat16"))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert apply_xla_flags("", "float32") == ""
    monkeypatch.setenv("XLA_FLAGS", "")
    assert apply_xla_flags("--xla_cpu_enable_fast_math=false", "float32") == "--xla_cpu_enable_fast_math=false"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("VIT_JAX_XLA_DEFAULTS", "0")
    assert apply_xla_flags("auto", "float32") == ""


@pytest.mark.parametrize("bad", ["bogus", "--xla_cpu_enable_fast_math=true -O2", "xla_cpu_ftz=true"])
def test_malformed_flags_are_a_config_error_naming_them(bad):
    config = base_config()
    config.xla_flags = bad
    with pytest.raises(ConfigError, match="config.xla_flags"):
        check_xla_flags(config)


def test_the_main_job_refuses_a_malformed_flag_before_xla_sees_it(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vit_jax.main", "--config=configs/digits.py",
                           f"--workdir={tmp_path}", "--config.xla_flags=-O3"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 2
    assert "config.xla_flags = '-O3'" in done.stderr
    assert not any(tmp_path.iterdir())


def test_xla_itself_is_asked_about_values_and_names_it_would_abort_on():
    """XLA aborts the process on these (a fatal log and the usage of every flag); asked in a child process, its
    own one-line reason is what the main job reports."""
    from vit_jax.xla_flags import xla_flags_error

    assert xla_flags_error("--xla_cpu_enable_fast_math=maybe") == (
        "Couldn't interpret value maybe for flag xla_cpu_enable_fast_math.")
    assert "Unknown flag in XLA_FLAGS: --xla_no_such_flag=1" in xla_flags_error("--xla_no_such_flag=1")
    assert xla_flags_error("--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2") is None
