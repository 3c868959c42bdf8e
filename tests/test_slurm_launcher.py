"""Sweeps through the SLURM launcher on a real single-node SLURM (munge + slurmctld + slurmd).

Real trainings (the mini EfficientFormer on Fashion-MNIST, a few iterations each) go through
``tools/sweep.py --launcher slurm`` (submitit, one job array) and ``tools/train.py`` on the
cluster of ``tests/slurm_cluster.py``, and what the scheduler and the run's files say afterwards
is checked: the records of a SLURM sweep equal those of the same sweep run locally; a cancelled
job is the only one resubmitted and it resumes from its checkpoint; a preempted (requeued) job
and one warned of its time limit (submitit's USR2) resume in the same job; a sweep re-invoked
while its jobs are queued, or two sweeps started at once, submit nothing twice. Accounting is
not configured (as on many small clusters): states come from ``squeue`` and the runs' own files.

Skipped, with the reason, where SLURM cannot run (no root, packages missing: ``make slurm``) or
Fashion-MNIST is missing (``make data``). The node has 2 CPUs: one per job.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import LocalSlurm, unavailable_reason

from lbp_wht.runs.slurm import SlurmOptions, submit_sweep
from lbp_wht.runs.sweep import Run

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "configs/mini/mini-efficientformer_partial_lp-l1-r4_fashion-mnist.py"
FMNIST = Path(os.environ.get("FMNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")  # fmt: skip
_NO_DATA = (
    None
    if all((FMNIST / f).exists() or (FMNIST / f"{f}.gz").exists() for f in _FILES)
    else f"Fashion-MNIST idx files not found in {FMNIST}: run `make data` or set FMNIST_ROOT"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]
needs_data = pytest.mark.skipif(_NO_DATA is not None, reason=str(_NO_DATA))

# Three runs of the mini smoke sweep (scripts/reproduce_mini.sh --smoke's methods).
METHODS = ("full_bp", "lora_all", "lbp_wht")
RUN_IDS = [f"smoke_method={m}_s0" for m in METHODS]

# A hook that slows every training iteration, so that a test can act in the middle of a run.
PACE_HOOK = """
import time
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

@HOOKS.register_module()
class PaceHook(Hook):
    def __init__(self, seconds=0.5):
        self.seconds = seconds

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        time.sleep(self.seconds)
"""


def _options(iters: int, ckpt_every: int) -> list[str]:
    opts = [
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={iters}",
        f"default_hooks.checkpoint.interval={ckpt_every}",
        "default_hooks.logger.interval=1",
        "train_dataloader.batch_size=8",
        "train_dataloader.dataset.max_per_class=20",
        "val_dataloader.dataset.max_per_class=10",
    ]
    return opts + [
        f"{loader}.dataset.dataset.data_root={FMNIST}"
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture(scope="module")
def paced_config(tmp_path_factory) -> tuple[Path, Path]:
    """The mini config with :data:`PACE_HOOK` (1.2 s per iteration: time to act mid-run, also
    while the cluster starts other jobs); its module's folder."""
    d = tmp_path_factory.mktemp("paced")
    (d / "pace_hook.py").write_text(PACE_HOOK)
    cfg = d / "paced.py"
    cfg.write_text(
        f"_base_ = ['{MINI}']\n"
        "custom_imports = dict(imports=['lbp_wht.integrations', 'lbp_wht.integrations.models',\n"
        "    'lbp_wht.integrations.runner', 'pace_hook'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='PaceHook', seconds=1.2)]\n"
    )
    return cfg, d


def _env(cluster: LocalSlurm, extra_path: Path | None = None) -> dict:
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    return dict(
        cluster.env,
        PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        LAUNCHER="",
        WAIT="",
    )


def _diagnose(cluster: LocalSlurm, work_root: Path | None = None) -> str:
    """squeue, the daemons' logs and the jobs' outputs: what a failure message needs."""
    parts = []
    try:
        parts.append(cluster.run("squeue", "-t", "all", "-o", "%i %T %r %j %Z").stdout)
    except subprocess.CalledProcessError as err:
        parts.append(f"squeue failed: {err.stderr}")
    for log in sorted((cluster.root / "log").glob("*.log")):
        parts.append(f"--- {log.name}\n{log.read_text()[-2500:]}")
    for out in sorted(work_root.glob("*/slurm-*.out")) if work_root else []:
        parts.append(f"--- {out}\n{out.read_text()[-1500:]}")
    return "\n".join(parts)


def _sweep(cluster, work_root: Path, *flags: str, config: Path = MINI, iters: int = 4,
           ckpt_every: int = 4, env_path: Path | None = None, timeout: float = 300,
           background: bool = False):  # fmt: skip
    """``tools/sweep.py grid CONFIG --set lbp.method=...`` (three runs) with ``flags``."""
    cmd = [
        sys.executable, str(ROOT / "tools/sweep.py"), "grid", str(config),
        "--set", f"lbp.method={','.join(METHODS)}", "--name", "smoke", "--seeds", "0",
        "--work-root", str(work_root), "--cfg-options", *_options(iters, ckpt_every), *flags,
    ]  # fmt: skip
    env = _env(cluster, env_path)
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"sweep timed out: {err}\n{_diagnose(cluster, work_root)}") from None
    return proc


SLURM_FLAGS = ("--launcher", "slurm", "--gpus-per-run", "0", "--cpus-per-task", "1")


def _ok(proc, cluster, work_root) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{text[-4000:]}\n" + _diagnose(
        cluster, work_root
    )
    return text


def _record(wd: Path) -> dict:
    return json.loads((wd / "record.json").read_text())


def _jobs(wd: Path) -> list[str]:
    return [j["job_id"] for j in json.loads((wd / "slurm_jobs.json").read_text())["jobs"]]


def _wait(pred, what: str, cluster, work_root, timeout: float = 180.0, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}\n{_diagnose(cluster, work_root)}")


def _listed(cluster) -> dict[str, list[str]]:
    """Job id (array tasks one per line) -> state, reason of every job squeue still knows."""
    out = cluster.run("squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r").stdout
    return {ln.split("|")[0]: ln.split("|")[1:] for ln in out.splitlines() if ln.strip()}


def _job_state(cluster, job_id: str) -> str:
    return _listed(cluster).get(job_id, ["GONE"])[0]


def _ckpt_iter(wd: Path) -> int:
    """The iteration of the newest checkpoint mmengine points to (0: none yet)."""
    try:
        m = re.search(r"iter_(\d+)\.pth", (wd / "last_checkpoint").read_text())
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def _train_iters(text: str) -> list[int]:
    return [int(i) for i in re.findall(r"Iter\(train\)\s*\[\s*(\d+)/\d+\]", text)]


@needs_data
def test_slurm_sweep_matches_the_local_sweep(cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    _ok(_sweep(cluster, local, "--jobs", "2"), cluster, local)
    text = _ok(_sweep(cluster, remote, *SLURM_FLAGS, "--wait", "--poll", "1"), cluster, remote)
    assert "3 runs, 3 done" in text, text
    for rid in RUN_IDS:
        a, b = _record(local / rid), _record(remote / rid)
        assert b["status"] == "complete" and b["iterations"] == 4, b
        # Same command, seed, thread count and machine: the same computation, bit for bit.
        assert (a["metric"], a["value"]) == (b["metric"], b["value"]), (rid, a["value"], b["value"])
        assert a["config_digest"] == b["config_digest"]  # the same config, wherever it ran
        jobs = _jobs(remote / rid)
        assert len(jobs) == 1
        out = (remote / rid / f"slurm-{jobs[0]}.out").read_text()
        assert f"run {rid}, job {jobs[0]}" in out and _train_iters(out)[0] == 1
    # one array for the three runs; its script is kept with submitit's files
    (array,) = {_jobs(remote / rid)[0].split("_")[0] for rid in RUN_IDS}
    script = remote / ".submitit" / f"{array}_submission.sh"
    assert script.read_text().startswith("#!/bin/bash\n") and "--array=0-2%3" in script.read_text()
    queued = cluster.queue()
    again = _ok(_sweep(cluster, remote, *SLURM_FLAGS), cluster, remote)
    assert "3 skipped" in again and "SUBMITTED" not in again, again
    # nothing new on the cluster (a finished job may still be listed while it completes, so
    # compare with what was listed before rather than asking for an empty queue)
    assert set(cluster.queue()) <= set(queued)


@needs_data
def test_cancelled_preempted_and_timed_out_jobs_resume(cluster, tmp_path, paced_config):
    config, hooks = paced_config
    root = tmp_path / "work"
    run = dict(config=config, iters=12, ckpt_every=3, env_path=hooks)
    _ok(_sweep(cluster, root, *SLURM_FLAGS, **run), cluster, root)
    cancel, preempt, other = (root / rid for rid in RUN_IDS)
    # Both CPUs busy with the first two runs; the third waits in the queue.
    _wait(lambda: _ckpt_iter(cancel) >= 6, "a checkpoint of the run to cancel", cluster, root)
    first = _jobs(cancel)[0]
    cluster.run("scancel", first)
    _wait(lambda: _job_state(cluster, first) == "CANCELLED", "the cancelled job", cluster, root)
    # A preemption with requeue: SIGTERM, then the job goes back to the queue (same id).
    _wait(lambda: _ckpt_iter(preempt) >= 3, "a checkpoint of the run to preempt", cluster, root)
    job_p = _jobs(preempt)[0]
    cluster.run("scontrol", "requeue", job_p)
    # Re-invoked now: only the cancelled run is resubmitted; the requeued one is queued.
    text = _ok(_sweep(cluster, root, *SLURM_FLAGS, **run), cluster, root)
    assert re.search(r"smoke_method=full_bp_s0\s+RESUBMITTED\s+resubmitted as job \d+ \(job "
                     rf"{first} CANCELLED.*resumes from iter_\d+\.pth", text), text  # fmt: skip
    assert " SUBMITTED " not in text and text.count("RESUBMITTED") == 1, text
    # The time-limit warning (what --signal=USR2@<lead> sends to the job's tasks): the job
    # stops its training and requeues itself, as it saved a checkpoint in this attempt.
    _wait(lambda: _ckpt_iter(other) >= 3, "a checkpoint of the third run", cluster, root)
    job_o = _jobs(other)[0]
    cluster.run("scancel", "--signal=USR2", job_o)
    # SLURM holds a requeued job back for about two minutes; let them start now.
    for job in (job_p, job_o):
        pending = lambda job=job: _job_state(cluster, job) == "PENDING"  # noqa: E731
        _wait(pending, f"requeued job {job}", cluster, root)
        cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    text = _ok(_sweep(cluster, root, *SLURM_FLAGS, "--wait", "--poll", "1", **run), cluster, root)
    assert "RESUBMITTED" not in text and " SUBMITTED " not in text, text
    for wd in (cancel, preempt, other):
        rec = _record(wd)
        assert rec["status"] == "complete" and rec["iterations"] == 12, (wd, rec)
    # The cancelled run: two jobs; the second started at the checkpoint, not at iteration 1.
    assert len(_jobs(cancel)) == 2 and _jobs(cancel)[0] == first
    before = (cancel / f"slurm-{first}.out").read_text()
    after = (cancel / f"slurm-{_jobs(cancel)[1]}.out").read_text()
    done_before = max(_train_iters(before))
    assert done_before >= 6 and f"resumed from {cancel / 'iter_'}" in after
    resumed = _train_iters(after)
    assert resumed[0] > 1 and resumed[0] <= done_before + 1 and resumed[-1] == 12, resumed
    # The preempted run: one job, run twice (restart 1), the second attempt resumed.
    assert _jobs(preempt) == [job_p]
    out = (preempt / f"slurm-{job_p}.out").read_text()
    attempts = out.split("== lbp_wht sweep: run ")
    assert len(attempts) == 3 and "(restart 1)" in attempts[2], out[-3000:]
    assert _train_iters(attempts[2])[0] > 1 and _train_iters(attempts[2])[-1] == 12
    # The run stopped near its time limit: one job, requeued by itself, resumed.
    assert _jobs(other) == [job_o]
    out = (other / f"slurm-{job_o}.out").read_text()
    attempts = out.split("== lbp_wht sweep: run ")
    assert len(attempts) == 3 and "(stopped by SIGUSR2)" in attempts[1], out[-3000:]
    assert f"time limit near: requeueing job {job_o}" in attempts[1]
    assert _train_iters(attempts[2])[0] > 1 and _train_iters(attempts[2])[-1] == 12
    # 4 jobs for 3 runs in all: nothing ran twice at once, nothing was submitted twice.
    ids = [j for wd in (cancel, preempt, other) for j in _jobs(wd)]
    assert len(ids) == len(set(ids)) == 4 and set(ids) <= set(_listed(cluster)), ids


@needs_data
def test_reinvoked_or_concurrent_sweeps_submit_nothing_twice(cluster, tmp_path):
    root = tmp_path / "work"
    held = (*SLURM_FLAGS, "--sbatch-args=--hold")  # queued until released: never runs here
    # Two sweeps at once on a fresh work root, then a third while the jobs are queued.
    procs = [_sweep(cluster, root, *held, background=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"sweep timed out: {err}\n{_diagnose(cluster, root)}") from None
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count(" SUBMITTED ") for o in outs) == 3, outs
    text = _ok(_sweep(cluster, root, *held), cluster, root)
    assert text.count(" QUEUED ") == 3 and "SUBMITTED" not in text, text
    jobs = {rid: _jobs(root / rid) for rid in RUN_IDS}
    assert all(len(j) == 1 for j in jobs.values()), jobs
    listed = _listed(cluster)
    mine = [listed[j[0]] for j in jobs.values()]
    assert all(m == ["PENDING", "JobHeldUser"] for m in mine), mine
    dry = _ok(_sweep(cluster, root, *held, "--dry-run"), cluster, root)
    assert "#!/bin/bash" not in dry and dry.count("queued") >= 3, dry
    cluster.run("scancel", *[j[0] for j in jobs.values()])


# Stands in for the interpreter of a multi-process run: each process says who it is; rank 0
# writes the complete record (what tools/train.py --launcher slurm would do after training).
FAKE_PYTHON = """#!/bin/bash
wd=""; prev=""
for a in "$@"; do
    case "$a" in --work-dir=*) wd="${a#--work-dir=}" ;; esac
    [ "$prev" = --work-dir ] && wd="$a"; prev="$a"
done
echo "rank $SLURM_PROCID of $SLURM_NTASKS port $MASTER_PORT args $*" >> "$wd/ranks.txt"
if [ "$SLURM_PROCID" = 0 ]; then
    sleep 1
    echo '{"status": "complete", "metric": "acc", "value": 1.0}' > "$wd/record.json"
fi
"""


def _fake_python(tmp_path: Path) -> Path:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return fake


def test_multi_process_run_is_one_task_per_process(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    wd = tmp_path / "work" / "dist"
    cmd = (str(_fake_python(tmp_path)), str(ROOT / "tools/train.py"), "configs/x.py",
           "--work-dir", str(wd), "--seed", "1")  # fmt: skip
    run = Run("dist", cmd, wd, cwd=str(ROOT))
    opts = SlurmOptions(gpus_per_run=0, tasks_per_run=2, cpus_per_task=1)
    report = submit_sweep([run], opts, resume_args=("--resume",), wait=True, poll_s=0.5,
                          out=io.StringIO())  # fmt: skip
    assert report.ok, [r.message for r in report.results] + [_diagnose(cluster, wd.parent)]
    ranks = sorted((wd / "ranks.txt").read_text().splitlines())
    port = 20000 + int(report.results[0].job_id) % 20000
    args = f"{ROOT}/tools/train.py configs/x.py --work-dir {wd} --seed 1 --resume --launcher slurm"
    assert ranks == [f"rank {i} of 2 port {port} args {args}" for i in (0, 1)]


def test_slurm_train_sh_runs_one_process_per_gpu(cluster, tmp_path):
    """``tools/slurm_train.sh`` (the OpenMMLab script, for a run by hand): srun, one process
    per GPU (here CPU processes: GRES empty), ``--launcher slurm``."""
    wd = tmp_path / "work"
    wd.mkdir()
    env = dict(GPUS="2", GPUS_PER_NODE="2", CPUS_PER_TASK="1", GRES="",
               PYTHON=str(_fake_python(tmp_path)))  # fmt: skip
    cmd = ["bash", str(ROOT / "tools/slurm_train.sh"), "", "by-hand", "configs/x.py", str(wd),
           "--seed", "1"]  # fmt: skip
    subprocess.run(cmd, env={**cluster.env, **env}, check=True, timeout=120, capture_output=True)
    ranks = sorted(ln.split(" port ")[0] + " args" + ln.split(" args")[1] for ln in (wd / "ranks.txt").read_text().splitlines())  # fmt: skip
    args = f"-u {ROOT}/tools/train.py configs/x.py --work-dir={wd} --launcher=slurm --seed 1"
    assert ranks == [f"rank {i} of 2 args {args}" for i in (0, 1)]


def test_max_jobs_keeps_the_queue_short(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    runs = [Run(f"r{i}", ("true",), tmp_path / f"r{i}") for i in range(3)]
    opts = SlurmOptions(gpus_per_run=0, cpus_per_task=1, sbatch_args=("--hold",), max_jobs=2)

    def statuses():
        report = submit_sweep(runs, opts, out=io.StringIO())
        return [r.status for r in report.results], report

    assert statuses()[0] == ["submitted", "submitted", "deferred"]
    got, report = statuses()
    assert got == ["queued", "queued", "deferred"] and report.ok
    cluster.run("scancel", report.results[0].job_id)
    # a pending array task that is cancelled leaves the queue at once (no CANCELLED record)
    _wait(lambda: _job_state(cluster, report.results[0].job_id) in ("CANCELLED", "GONE"),
          "the cancel", cluster, tmp_path)  # fmt: skip
    assert statuses()[0] == ["resubmitted", "queued", "deferred"]
    ids = [_jobs(r.work_dir) for r in runs[:2]]
    assert len(ids[0]) == 2 and len(ids[1]) == 1 and not runs[2].work_dir.exists()
    cluster.run("scancel", ids[0][-1], ids[1][0])


@needs_data
def test_two_process_training_through_the_sweep(cluster, tmp_path):
    """A real run of 2 processes (srun, --launcher slurm, gloo on CPU) from the SLURM sweep."""
    root = tmp_path / "work"
    cmd = [
        sys.executable, str(ROOT / "tools/sweep.py"), "grid", str(MINI), "--set",
        "lbp.method=lbp_wht", "--name", "dist", "--seeds", "0", "--work-root", str(root),
        "--cfg-options", *_options(4, 4), "--launcher", "slurm", "--gpus-per-run", "0",
        "--tasks-per-run", "2", "--cpus-per-task", "1", "--wait", "--poll", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(cluster), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    _ok(proc, cluster, root)
    wd = root / "dist_method=lbp_wht_s0"
    rec = _record(wd)
    assert rec["status"] == "complete" and rec["iterations"] == 4 and rec["world_size"] == 2
    out = (wd / f"slurm-{_jobs(wd)[0]}.out").read_text()
    assert "--launcher slurm" in out
    assert "Distributed launcher: slurm" in out and "Distributed training: True" in out
