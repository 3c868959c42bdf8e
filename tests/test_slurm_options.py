"""The SLURM launcher without a cluster: options, the array script, run states from a queue.

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

from lbp_wht.runs import slurm
from lbp_wht.runs.records import write_record
from lbp_wht.runs.slurm import (
    Job,
    Queue,
    SlurmConfigError,
    SlurmOptions,
    job_command,
    job_script,
    run_status,
)
from lbp_wht.runs.sweep import Run

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
        ({"sbatch_args": ["-p", "gpu"]}, "'-p': give sbatch options as --key or --key=value"),
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


# ---------------------------------------------------------------------------- job script
def _sbatch(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]


def test_job_script_one_gpu(tmp_path):
    root = tmp_path / "work"
    opts = SlurmOptions(
        partition="gpu", time="12:00:00", mem="32G", cpus_per_task=8, account="proj",
        gpu_type="a100", sbatch_args=("--exclusive",), setup=("module load cuda/12",),
    )  # fmt: skip
    text = job_script(opts, root, n=3, cwd=str(ROOT))
    assert set(_sbatch(text)) >= {
        "#SBATCH --array=0-2%3",  # one array of the runs to submit
        "#SBATCH --gres=gpu:a100:1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32G",
        "#SBATCH --time=12:00:00",  # the user's form; submitit's own minutes are replaced
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --exclusive",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",  # submitit's time-limit warning, signal_lead_s ahead
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={root}/.submitit/%A_%a_0_log.out",
    }
    # setup runs in the repository (relative paths such as .venv/bin/activate work)
    assert text.index(f"cd {ROOT} || exit 1\nmodule load cuda/12\n") > 0
    assert "srun --unbuffered" in text and "-m submitit.core._submit" in text
    assert not root.exists()  # writing a script text creates nothing
    proc = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    # no time limit given: no --time line (the partition's default applies), one job, no array
    plain = _sbatch(job_script(SlurmOptions(gpus_per_run=0), root))
    assert not [ln for ln in plain if ln.startswith(("#SBATCH --time", "#SBATCH --array"))]
    assert "#SBATCH --no-requeue" in _sbatch(job_script(SlurmOptions(requeue=False), root))
    run = _run(tmp_path)
    assert job_command(run, opts, ("--resume",)) == [*run.command, "--resume"]


def test_multi_gpu_run_is_one_task_per_gpu(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools/train.py"), "configs/x.py", "--work-dir",
           str(tmp_path / "work" / "r0"), "--seed", "3"]  # fmt: skip
    run = _run(tmp_path, cmd=cmd)
    opts = SlurmOptions(gpus_per_run=16, gpus_per_node=8, cpus_per_task=6)
    head = _sbatch(job_script(opts, tmp_path / "work"))
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gres=gpu:8"} <= set(head)
    # every task (srun, one per GPU) runs the training with --launcher slurm
    assert job_command(run, opts, ("--resume",)) == cmd + ["--resume", "--launcher", "slurm"]
    # CPU processes (gloo): no GPU request
    head = _sbatch(job_script(SlurmOptions(gpus_per_run=0, tasks_per_run=2), tmp_path / "work"))
    assert "#SBATCH --ntasks-per-node=2" in head and not any("--gres" in ln for ln in head)
    other = _run(tmp_path, "r1", cmd=["bash", "-c", "true"])
    with pytest.raises(SlurmConfigError, match="needs a `python tools/train.py CONFIG"):
        job_command(other, SlurmOptions(gpus_per_run=2), ())


def test_job_script_refuses_white_space_in_the_work_root(tmp_path):
    with pytest.raises(SlurmConfigError, match="white space"):
        job_script(SlurmOptions(), tmp_path / "my runs")


# -------------------------------------------------------------------------------- states
def _queue(*jobs: Job) -> Queue:
    return Queue(list(jobs))


def test_states_from_the_queue_and_the_work_dir(tmp_path):
    run = _run(tmp_path)
    assert run_status(run, _queue()).state == "todo"
    run.work_dir.mkdir(parents=True)
    assert run_status(run, _queue()).state == "stale"
    # a task of an array whose submission a crashed sweep never recorded: found by its
    # comment and index, so it is not submitted twice
    mark = {"token": "t0k", "index": 2}
    write_record(run.work_dir / slurm.JOBS_NAME, {"jobs": [], "submitting": mark})
    pend = Job("9_2", "PENDING", "Priority", "lbp_wht:t0k")
    assert run_status(run, _queue(pend, Job("9_1", "PENDING", "", "lbp_wht:t0k"))).state == "queued"
    assert run_status(run, _queue(Job("9_1", "PENDING", "", "lbp_wht:t0k"))).state == "stale"
    write_record(run.work_dir / slurm.JOBS_NAME, {"jobs": [{"job_id": "7"}]})
    assert run_status(run, _queue(Job("7", "RUNNING", "None"))).state == "running"
    assert run_status(run, _queue(Job("7", "COMPLETING", "None"))).state == "running"
    (run.work_dir / "iter_40.pth").write_bytes(b"x")
    (run.work_dir / "last_checkpoint").write_text(str(run.work_dir / "iter_40.pth"))
    st = run_status(run, _queue(Job("7", "CANCELLED", "None")))
    assert st.state == "ended" and "job 7 CANCELLED" in st.detail
    assert "resumes from iter_40.pth" in st.detail and not st.fresh
    gone = run_status(run, _queue())  # after MinJobAge the scheduler forgets the job
    assert gone.state == "ended" and "job 7 is no longer queued" in gone.detail
    # an id recorded, its job requeued (pending again): queued, not ended
    assert run_status(run, _queue(Job("7", "PENDING", "BeginTime"))).state == "queued"
    # an incomplete record of another config cannot resume: fresh start
    write_record(run.record_path, {"status": "interrupted", "config_digest": "aaaa"})
    st = run_status(run, _queue(), expected_digest=lambda r: "bbbb")
    assert st.state == "ended" and st.fresh and "starts afresh" in st.detail
    write_record(run.record_path, {"status": "complete", "config_digest": "aaaa"})
    assert run_status(run, _queue(Job("7", "PENDING", ""))).state == "done"  # the record wins
    assert run_status(run, _queue(), expected_digest=lambda r: "bbbb").state == "changed"
    # a dry run without a scheduler: what was submitted is said to be, nothing more
    write_record(run.record_path, {"status": "running"})
    assert run_status(run, None).state == "submitted"


def test_dry_run_without_a_scheduler_lists_the_runs_and_the_script(tmp_path, monkeypatch):
    runs = [_run(tmp_path, f"r{i}") for i in range(3)]
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands there
    text = slurm.dry_run_scripts(runs, SlurmOptions(), resume_args=("--resume",))
    assert text.count("#!/bin/bash\n") == 1 and "#SBATCH --array=0-2%3" in text
    assert text.count("--resume\n") == 3 and text.count("-> would submit") == 3
    assert "no scheduler to ask here" in text and text.endswith("3 runs to submit")
    assert not (tmp_path / "work").exists()
    with pytest.raises(slurm.SchedulerError, match="nothing was submitted"):
        slurm.submit_sweep(runs, SlurmOptions())


def test_table2_dry_run_lists_its_210_runs_and_one_array(tmp_path):
    """``LAUNCHER=slurm scripts/reproduce_table2.sh --dry-run``: every run, one array script."""
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
    assert out.count("#!/bin/bash\n") == 1 and "#SBATCH --array=0-209%210\n" in out
    assert out.count("-> would submit") == 210 and out.count(" --resume\n") == 210
    assert "#SBATCH --partition=gpu\n" in out and "#SBATCH --gres=gpu:1\n" in out
    assert out.rstrip().endswith("210 runs (210 todo); 210 runs to submit")
    assert not (tmp_path / "work").exists()  # a dry run creates nothing


# ------------------------------------------------- failure paths of the scheduler (a stand-in)
class FlakyScheduler(slurm.Scheduler):
    """A scheduler stand-in for the paths a real one takes rarely: ``sbatch`` failing after
    (or before) the controller accepted the array, ``squeue`` timing out. Jobs finish when told."""

    def __init__(self, accept_on_error: bool = False, fail_submits=(), fail_queues=()):
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

    def submit(self, jobs, parameters, folder):
        self.calls["submit"] += 1
        n = 100 + self.calls["submit"]
        ids = [f"{n}_{k}" if len(jobs) > 1 else str(n) for k in range(len(jobs))]
        listed = {i: Job(i, "PENDING", "None", parameters["comment"]) for i in ids}
        if self.calls["submit"] in self.fail_submits:
            if self.accept_on_error:
                self.jobs.update(listed)
            raise slurm.SchedulerError("sbatch: Socket timed out on send/recv operation")
        self.jobs.update(listed)
        return ids


def test_a_failed_sbatch_submits_nothing_and_an_accepted_one_is_found(tmp_path):
    runs = [_run(tmp_path, f"r{i}") for i in range(3)]
    flaky = FlakyScheduler(fail_submits={1})
    report = slurm.submit_sweep(runs, SlurmOptions(), scheduler=flaky, out=io.StringIO())
    assert [r.status for r in report.results] == ["failed"] * 3 and not report.ok
    assert "sbatch failed" in report.results[1].message and flaky.calls["submit"] == 1
    assert slurm.read_jobs(runs[1]) == {  # no marker left, no job recorded
        "run_id": "r1", "work_dir": str(runs[1].work_dir), "jobs": []
    }  # fmt: skip
    # The controller took the array although sbatch reported an error: found by its comment.
    runs = [_run(tmp_path / "b", f"r{i}") for i in range(2)]
    flaky = FlakyScheduler(accept_on_error=True, fail_submits={1})
    report = slurm.submit_sweep(runs, SlurmOptions(), scheduler=flaky, out=io.StringIO())
    assert [r.status for r in report.results] == ["submitted", "submitted"]
    assert "sbatch: Socket timed out" in report.results[0].message
    assert [j["job_id"] for j in slurm.read_jobs(runs[0])["jobs"]] == ["101_0"]
    again = slurm.submit_sweep(runs, SlurmOptions(), scheduler=flaky, out=io.StringIO())
    assert [r.status for r in again.results] == ["queued", "queued"]
    assert flaky.calls["submit"] == 1  # never a second job for a run


def test_a_crash_between_sbatch_and_the_record_submits_nothing_twice(tmp_path):
    """The sweep dies after sbatch answered and before the job ids were written: the next one
    finds the array's tasks by the marker it left, records them and submits nothing."""
    runs = [_run(tmp_path, f"r{i}") for i in range(2)]
    flaky = FlakyScheduler()

    class Crash(BaseException):
        pass

    real = slurm.write_record

    def crash_after_sbatch(path, rec):
        if flaky.calls["submit"] and "submitting" not in rec:
            raise Crash
        return real(path, rec)

    slurm.write_record = crash_after_sbatch
    try:
        with pytest.raises(Crash):
            slurm.submit_sweep(runs, SlurmOptions(), scheduler=flaky, out=io.StringIO())
    finally:
        slurm.write_record = real
    assert all("submitting" in slurm.read_jobs(r) for r in runs)
    again = slurm.submit_sweep(runs, SlurmOptions(), scheduler=flaky, out=io.StringIO())
    assert [r.status for r in again.results] == ["queued", "queued"]
    assert flaky.calls["submit"] == 1


def test_waiting_sweep_rides_out_squeue_time_outs(tmp_path, monkeypatch):
    runs = [_run(tmp_path, f"r{i}") for i in range(2)]
    flaky = FlakyScheduler(fail_queues={2, 3})
    out = io.StringIO()

    def finish_jobs(seconds):  # what the cluster does between two polls
        for run in runs:
            write_record(run.record_path, {"status": "complete", "metric": "acc", "value": 1.0})
        flaky.jobs.clear()

    monkeypatch.setattr(slurm.time, "sleep", finish_jobs)
    report = slurm.submit_sweep(runs, SlurmOptions(), scheduler=flaky, wait=True, out=out)
    assert [r.status for r in report.results] == ["done", "done"] and report.ok
    assert out.getvalue().count("Socket timed out") == 2
