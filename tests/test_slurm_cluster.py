"""The local SLURM cluster the launcher tests run on: a real slurmctld + slurmd, not a mock."""

import time

import pytest
from slurm_cluster import LocalSlurm, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _wait(pred, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.5)
    return False


def test_array_job_runs_every_task(slurm, tmp_path):
    out = tmp_path / "task_%a.txt"
    slurm.run("sbatch", "--array=0-2", "-o", str(out), "--wrap", "echo task $SLURM_ARRAY_TASK_ID")
    files = [tmp_path / f"task_{i}.txt" for i in range(3)]
    assert _wait(lambda: all(f.exists() and f.read_text().strip() for f in files))
    assert [f.read_text().strip() for f in files] == ["task 0", "task 1", "task 2"]


def test_cancelled_job_leaves_the_queue(slurm, tmp_path):
    job = slurm.run("sbatch", "--parsable", "--wrap", "sleep 300").stdout.strip()
    assert _wait(lambda: job in slurm.queue())
    slurm.run("scancel", job)
    assert _wait(lambda: job not in slurm.queue())
