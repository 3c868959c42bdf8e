"""The SLURM launcher without a cluster: options, job scripts, run states from a given queue.

What a real scheduler does with the scripts is tested in ``tests/test_slurm_launcher.py``
(a real single-node SLURM); here the parts that need none, so they run everywhere.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbp_wht import slurm
from lbp_wht.records import write_record
from lbp_wht.slurm import Job, Queue, SlurmConfigError, SlurmOptions, job_script, run_status
from lbp_wht.sweep import Run

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, name: str = "r0", cmd=None) -> Run:
    cmd = cmd or [sys.executable, str(ROOT / "tools/train.py"), "configs/x.py", "--seed", "0"]
    return Run(name, tuple(cmd), tmp_path / "work" / name, cwd=str(ROOT))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    slurm.add_arguments(p)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "values, needle",
    [
        ({"partiton": "gpu"}, "did you mean 'partition'"),
        ({"time": "12h"}, "time '12h': not a SLURM time limit"),
        ({"time": "1:00"}, "not longer than signal_lead_s"),
        ({"mem": "lots"}, "mem 'lots'"),
        ({"gpus_per_run": -1}, "gpus_per_run: -1 is below"),
        ({"gpus_per_run": "two"}, "gpus_per_run: expected a whole number"),
        ({"gpus_per_run": True}, "gpus_per_run: expected a whole number"),
        ({"gpus_per_run": 2, "tasks_per_run": 4}, "one process per GPU"),
        ({"gpus_per_run": 6, "gpus_per_node": 4}, "not a multiple of gpus_per_node"),
        ({"requeue": "maybe"}, "requeue: expected true or false"),
        ({"partition": "gpu a100"}, "must be one word"),
        ({"sbatch_args": [1, 2]}, "sbatch_args: expected a list of strings"),
    ],
)
def test_bad_options_name_the_key(values, needle):
    with pytest.raises(SlurmConfigError, match=None) as err:
        SlurmOptions.from_mapping(values, source="slurm.yaml")
    assert needle in str(err.value)


def test_time_limits_in_every_slurm_form():
    assert [
        slurm.time_limit_s(t) for t in ("30", "5:30", "12:00:00", "2-00", "1-12:30", "1-0:0:10")
    ] == [1800, 330, 43200, 172800, 131400, 86410]
    assert slurm.time_limit_s("UNLIMITED") is None


def test_options_file_yaml_and_json_flags_win_and_extend(tmp_path):
    yml = tmp_path / "slurm.yaml"
    yml.write_text(
        "partition: gpu\ngpus_per_run: 2\ntime: '12:00:00'\nsbatch_args: [--exclusive]\n"
        "setup: [module load cuda]\n"
    )
    args = _parse(
        ["--slurm-config", str(yml), "--partition", "a100", "--sbatch-args=--qos=high --nice"]
    )
    opts = slurm.options_from_args(args)
    assert (opts.partition, opts.gpus_per_run, opts.time) == ("a100", 2, "12:00:00")
    assert opts.sbatch_args == ("--exclusive", "--qos=high", "--nice")
    assert opts.setup == ("module load cuda",)
    js = tmp_path / "slurm.json"
    js.write_text(json.dumps({"account": "proj", "max_jobs": 4, "requeue": False}))
    opts = slurm.options_from_args(_parse(["--slurm-config", str(js)]))
    assert (opts.account, opts.max_jobs, opts.requeue) == ("proj", 4, False)
    for bad, needle in (("x.toml", "use a .yaml"), ("missing.yaml", "not found")):
        p = tmp_path / bad
        if bad.endswith("toml"):
            p.write_text("a = 1")
        with pytest.raises(SlurmConfigError, match=needle):
            slurm.load_options_file(p)
    (tmp_path / "list.yaml").write_text("- partition\n")
    with pytest.raises(SlurmConfigError, match="expected a mapping"):
        slurm.load_options_file(tmp_path / "list.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SlurmConfigError, match="cannot be read"):
        slurm.load_options_file(tmp_path / "broken.json")


def test_flags_default_to_the_environment(monkeypatch):
    monkeypatch.setenv("PARTITION", "batch")
    monkeypatch.setenv("GPUS_PER_RUN", "0")
    monkeypatch.setenv("TIME_LIMIT", "30")
    monkeypatch.setenv("LAUNCHER", "slurm")
    monkeypatch.setenv("WAIT", "1")
    args = _parse([])
    opts = slurm.options_from_args(args)
    assert args.launcher == "slurm" and args.wait
    assert (opts.partition, opts.gpus_per_run, opts.time) == ("batch", 0, "30")


# ----------------------------------------------------------------------------- job script
def test_job_script_one_gpu(tmp_path):
    run = _run(tmp_path)
    opts = SlurmOptions(
        partition="gpu", time="12:00:00", mem="32G", cpus_per_task=8, account="proj",
        gpu_type="a100", sbatch_args=("--exclusive",), setup=("module load cuda/12",),
    )  # fmt: skip
    text = job_script(run, opts, resume_args=("--resume",))
    head = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    wd = run.work_dir
    assert head == [
        "#SBATCH --job-name=r0",
        f"#SBATCH --chdir={wd}",
        f"#SBATCH --output={wd}/slurm-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --ntasks=1",
        "#SBATCH --gres=gpu:a100:1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32G",
        "#SBATCH --time=12:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --exclusive",
    ]
    # setup runs in the repository (relative paths such as .venv/bin/activate work)
    assert text.index(f"cd {ROOT} || exit 1\nmodule load cuda/12\n") > 0
    assert f"cmd=({sys.executable} {ROOT}/tools/train.py configs/x.py --seed 0 --resume)" in text
    assert not run.work_dir.exists()  # writing a script text creates nothing
    proc = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_job_script_of_a_multi_gpu_run_goes_through_slurm_train(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools/train.py"), "configs/x.py", "--work-dir",
           str(tmp_path / "work" / "r0"), "--seed", "3"]  # fmt: skip
    run = _run(tmp_path, cmd=cmd)
    text = job_script(run, SlurmOptions(gpus_per_run=16, gpus_per_node=8, cpus_per_task=6),
                      resume_args=("--resume",))  # fmt: skip
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=8\n#SBATCH --gres=gpu:8\n" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("cmd=("))
    assert line == (
        f"cmd=(env GPUS=16 GPUS_PER_NODE=8 CPUS_PER_TASK=6 PYTHON={sys.executable} GRES=gpu:8 "
        f'{ROOT}/tools/slurm_train.sh "${{SLURM_JOB_PARTITION:-}}" r0 configs/x.py '
        f"{run.work_dir} --seed 3 --resume)"
    )
    # CPU processes (gloo): no GPU request, GRES empty
    text = job_script(run, SlurmOptions(gpus_per_run=0, tasks_per_run=2))
    assert "--gres" not in text and "GPUS=2 GPUS_PER_NODE=2" in text and "GRES= " in text
    other = _run(tmp_path, "r1", cmd=["bash", "-c", "true"])
    with pytest.raises(SlurmConfigError, match="needs a `python tools/train.py CONFIG"):
        job_script(other, SlurmOptions(gpus_per_run=2))


def test_job_script_refuses_white_space_in_the_work_dir(tmp_path):
    run = Run("r0", ("true",), tmp_path / "my runs" / "r0")
    with pytest.raises(SlurmConfigError, match="white space"):
        job_script(run, SlurmOptions())


# -------------------------------------------------------------------------------- states
def _queue(*jobs: Job) -> Queue:
    return Queue(list(jobs))


def test_states_from_the_queue_and_the_work_dir(tmp_path):
    run = _run(tmp_path)
    wd = str(run.work_dir)
    assert run_status(run, _queue()).state == "todo"
    # a job with the run's work dir counts even when no id was recorded (a crashed sweep)
    pend = Job("7", "PENDING", "Priority", "r0", wd)
    assert run_status(run, _queue(pend)).state == "queued"
    assert run_status(run, _queue(Job("7", "RUNNING", "None", "r0", wd))).state == "running"
    assert run_status(run, _queue(Job("7", "COMPLETING", "None", "r0", wd))).state == "running"
    run.work_dir.mkdir(parents=True)
    assert run_status(run, _queue()).state == "stale"
    write_record(run.work_dir / slurm.JOBS_NAME, {"jobs": [{"job_id": "7"}]})
    (run.work_dir / "last_checkpoint").write_text(str(run.work_dir / "iter_40.pth"))
    st = run_status(run, _queue(Job("7", "CANCELLED", "None", "r0", wd)))
    assert st.state == "ended" and "job 7 CANCELLED" in st.detail
    assert "resumes from iter_40.pth" in st.detail and not st.fresh
    gone = run_status(run, _queue())  # after MinJobAge the scheduler forgets the job
    assert gone.state == "ended" and "job 7 is no longer queued" in gone.detail
    # an id recorded, its job requeued (pending again): queued, not ended
    assert run_status(run, _queue(Job("7", "PENDING", "BeginTime", "r0", "/elsewhere"))).state == (
        "queued"
    )
    # an incomplete record of another config cannot resume: fresh start
    write_record(run.record_path, {"status": "interrupted", "config_digest": "aaaa"})
    st = run_status(run, _queue(), expected_digest=lambda r: "bbbb")
    assert st.state == "ended" and st.fresh and "starts afresh" in st.detail
    write_record(run.record_path, {"status": "complete", "config_digest": "aaaa"})
    assert run_status(run, _queue(pend)).state == "done"  # the record wins
    assert run_status(run, _queue(), expected_digest=lambda r: "bbbb").state == "changed"
    # a dry run without a scheduler: what was submitted is said to be, nothing more
    write_record(run.record_path, {"status": "running"})
    assert run_status(run, None).state == "submitted"


def test_dry_run_without_a_scheduler_lists_the_scripts(tmp_path):
    runs = [_run(tmp_path, f"r{i}") for i in range(3)]
    client = slurm.SlurmClient(env={"PATH": str(tmp_path)})  # no SLURM commands there
    text = slurm.dry_run_scripts(runs, SlurmOptions(), client=client, resume_args=("--resume",))
    assert text.count("#!/bin/bash\n") == 3
    assert "no scheduler to ask here" in text and text.endswith("3 job scripts to submit")
    assert not (tmp_path / "work").exists()
    with pytest.raises(slurm.SchedulerError, match="nothing was submitted"):
        slurm.submit_sweep(runs, SlurmOptions(), client=client)


def test_table2_dry_run_lists_210_job_scripts(tmp_path):
    """``LAUNCHER=slurm scripts/reproduce_table2.sh --dry-run``: one job script per run."""
    opts = tmp_path / "slurm.yaml"
    opts.write_text("partition: gpu\ntime: '12:00:00'\ncpus_per_task: 8\nmem: 32G\n")
    env = {
        # No cluster to ask (states from the work dirs): the listing needs no scheduler.
        **{k: v for k, v in os.environ.items() if k != "SLURM_CONF"},
        "LAUNCHER": "slurm",
        "LAUNCHER_CONFIG": str(opts),
        "WORK_ROOT": str(tmp_path / "work"),
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/reproduce_table2.sh"), "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("#!/bin/bash\n") == 210
    assert out.count("#SBATCH --job-name=") == 210 and out.count("--resume)") == 210
    assert out.count("#SBATCH --partition=gpu\n") == 210 and "#SBATCH --gres=gpu:1\n" in out
    assert out.rstrip().endswith("210 runs (210 todo); 210 job scripts to submit")
    assert not (tmp_path / "work").exists()  # a dry run creates nothing


# ------------------------------------------------- failure paths of the scheduler (a stand-in)
class FlakyScheduler(slurm.SlurmClient):
    """A scheduler stand-in for the paths a real one takes rarely: ``sbatch`` failing after
    (or before) the controller accepted the job, ``squeue`` timing out. Jobs finish when told."""

    def __init__(self, accept_on_error: bool = False, fail_submits=(), fail_queues=()):
        super().__init__(env={"PATH": "/nonexistent"})
        self.jobs: dict[str, Job] = {}
        self.calls = {"submit": 0, "queue": 0}
        self.accept_on_error = accept_on_error
        self.fail_submits, self.fail_queues = set(fail_submits), set(fail_queues)

    def unavailable(self):
        return None

    def queue(self):
        self.calls["queue"] += 1
        if self.calls["queue"] in self.fail_queues:
            raise slurm.SchedulerError("squeue: Socket timed out on send/recv operation")
        return Queue(list(self.jobs.values()))

    def submit(self, script):
        self.calls["submit"] += 1
        wd = str(script.parent)
        job = Job(str(100 + self.calls["submit"]), "PENDING", "None", script.parent.name, wd)
        if self.calls["submit"] in self.fail_submits:
            if self.accept_on_error:
                self.jobs[job.job_id] = job
            raise slurm.SchedulerError("sbatch: Socket timed out on send/recv operation")
        self.jobs[job.job_id] = job
        return job.job_id

    def describe(self, job_id):
        return None


def test_a_failed_sbatch_stops_submitting_and_an_accepted_one_is_found(tmp_path):
    runs = [_run(tmp_path, f"r{i}") for i in range(3)]
    flaky = FlakyScheduler(fail_submits={2})
    report = slurm.submit_sweep(runs, SlurmOptions(), client=flaky, out=io.StringIO())
    assert [r.status for r in report.results] == ["submitted", "failed", "deferred"]
    assert "sbatch failed" in report.results[1].message and not report.ok
    assert flaky.calls["submit"] == 2 and not runs[2].work_dir.exists()
    assert slurm.read_jobs(runs[1]) == {  # no marker left, no job recorded
        "run_id": "r1", "work_dir": str(runs[1].work_dir), "jobs": []
    }  # fmt: skip
    # The controller took the job although sbatch reported an error: found by its work dir.
    runs = [_run(tmp_path / "b", f"r{i}") for i in range(2)]
    flaky = FlakyScheduler(accept_on_error=True, fail_submits={1})
    report = slurm.submit_sweep(runs, SlurmOptions(), client=flaky, out=io.StringIO())
    assert [r.status for r in report.results] == ["submitted", "submitted"]
    assert "sbatch: Socket timed out" in report.results[0].message
    assert [j["job_id"] for j in slurm.read_jobs(runs[0])["jobs"]] == ["101"]
    again = slurm.submit_sweep(runs, SlurmOptions(), client=flaky, out=io.StringIO())
    assert [r.status for r in again.results] == ["queued", "queued"]
    assert flaky.calls["submit"] == 2  # never a second job for r0


def test_waiting_sweep_rides_out_squeue_time_outs(tmp_path, monkeypatch):
    runs = [_run(tmp_path, f"r{i}") for i in range(2)]
    flaky = FlakyScheduler(fail_queues={2, 3})
    out = io.StringIO()

    def finish_jobs(seconds):  # what the cluster does between two polls
        for run in runs:
            write_record(run.record_path, {"status": "complete", "metric": "acc", "value": 1.0})
        flaky.jobs.clear()

    monkeypatch.setattr(slurm.time, "sleep", finish_jobs)
    report = slurm.submit_sweep(runs, SlurmOptions(), client=flaky, wait=True, out=out)
    assert [r.status for r in report.results] == ["done", "done"] and report.ok
    assert out.getvalue().count("Socket timed out") == 2
