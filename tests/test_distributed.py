import pytest

from vit_jax.distributed import cluster_detected, initialize


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "8"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t1v-n-0,t1v-n-1"}, True),
    ],
)
def test_cluster_detection(environ, expected):
    assert cluster_detected(environ) is expected


def test_a_single_process_run_does_not_start_the_runtime(monkeypatch):
    for name in ("SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert initialize("auto") is False
    assert initialize("off", "127.0.0.1:1", 2, 0) is False
    with pytest.raises(ValueError, match="distributed must be one of"):
        initialize("maybe")


def test_process_flags_are_checked_before_jax_distributed_sees_them():
    """jax.distributed would raise from deep inside (or wait for a coordinator that never comes)."""
    with pytest.raises(ValueError, match=r"--num_processes=0: expected a positive number of processes"):
        initialize("auto", None, 0, None)
    with pytest.raises(ValueError, match=r"--process_id=5: expected 0\.\.1 \(one per process\)"):
        initialize("auto", "127.0.0.1:1234", 2, 5)
    with pytest.raises(ValueError, match=r"--coordinator_address is needed with --num_processes > 1"):
        initialize("auto", None, 2, 1)
