"""A real single-node SLURM cluster for tests (not a mock).

``LocalSlurm`` writes a minimal ``slurm.conf`` into a temporary directory, starts ``munged``
(as the ``munge`` user) unless one already answers, then ``slurmctld`` and ``slurmd`` on ports
of their own, and stops exactly the daemons it started. Clients find the cluster through the
``SLURM_CONF`` environment variable it sets, so ``/etc/slurm`` is never touched.

Needs root and the Debian packages ``slurmctld slurmd slurm-client munge`` (``make slurm``
installs them). :func:`unavailable_reason` says why a machine cannot run it, for a clean skip.
Accounting (``sacct``) is not configured: job state comes from ``squeue`` and the run records,
as it does for the sweep's SLURM launcher.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel")


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def unavailable_reason() -> str | None:
    """None if this machine can run :class:`LocalSlurm`, else why not (for ``pytest.skip``)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs jobs as their user)"
    missing = [d for d in DAEMONS if _find(d) is None]
    if missing:
        return (
            f"SLURM / munge not installed (missing {', '.join(missing)}); run `make slurm` "
            "(apt-get install slurmctld slurmd slurm-client munge)"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """Start a one-node SLURM cluster in ``root`` (a directory it may fill); a context manager.

    Attributes:
        conf: the ``slurm.conf`` path; ``env`` has ``SLURM_CONF`` set for client commands.
        partition: the default partition's name.
    """

    partition = "debug"

    def __init__(self, root: str | os.PathLike, cpus: int = 2, memory_mb: int = 4000) -> None:
        self.root = Path(root)
        self.cpus, self.memory_mb = cpus, memory_mb
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self._started: list[Path] = []  # pid files of the daemons this instance started
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # ---- set-up --------------------------------------------------------------------------
    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=lbptest",
                    f"SlurmctldHost={self.host}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/run/slurmctld.pid",
                    f"SlurmdPidFile={r}/run/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    # Fast state changes: tests cancel and requeue jobs.
                    "SchedulerParameters=sched_interval=1",
                    "MinJobAge=300",
                    "KillWait=5",
                    f"NodeName={self.host} CPUs={self.cpus} RealMemory={self.memory_mb} "
                    "State=UNKNOWN",
                    f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE "
                    "State=UP",
                    "",
                ]
            )
        )

    def _munge_answers(self) -> bool:
        try:
            enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
            if enc.returncode != 0:
                return False
            dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
            return dec.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_munge(self) -> None:
        if self._munge_answers():
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        # In /run/munge: the munge user cannot reach the (root-only) test directory.
        pid = run_dir / "munged.pid"
        subprocess.run(
            ["runuser", "-u", "munge", "--", _find("munged"), f"--pid-file={pid}"],
            check=True,
            timeout=30,
        )
        self._started.append(pid)
        self._wait(self._munge_answers, "munged to answer")

    def _wait(self, ok, what: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok():
                return
            time.sleep(0.5)
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}" for p in (self.root / "log").glob("*.log")
        )
        raise RuntimeError(f"LocalSlurm: timed out waiting for {what}\n{logs}")

    def _node_idle(self) -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env
        )
        return out.returncode == 0 and out.stdout.strip().startswith("idle")

    def start(self) -> LocalSlurm:
        self._write_conf()
        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_find(daemon), "-f", str(self.conf)], check=True, env=self.env)
            self._started.append(self.root / "run" / f"{daemon}.pid")
        self._wait(self._node_idle, "the node to be idle (sinfo)")
        return self

    # ---- tear-down ------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the daemons this instance started (newest first), by their pid files."""
        for pid_file in reversed(self._started):
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            end = time.monotonic() + 20
            while time.monotonic() < end:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)
        self._started.clear()

    def __enter__(self) -> LocalSlurm:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- helpers for tests ----------------------------------------------------------------
    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (text output, checked)."""
        return subprocess.run(
            list(cmd), capture_output=True, text=True, env=self.env, check=True, **kw
        )

    def queue(self) -> list[str]:
        """Job ids (``123`` or ``123_4``) still pending or running."""
        out = self.run("squeue", "-h", "-o", "%i").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
