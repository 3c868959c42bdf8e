"""What the analyses' reports share: their templates (``analysis/templates/``, then the
package's), the machine, the code revision and the load average they record."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from lbp_wht.reporting.paths import REPO
from lbp_wht.reporting.render import environment

HERE = Path(__file__).resolve().parent


def render(template: str, **context: Any) -> str:
    """``analysis/templates/<template>`` (or the package's) rendered with ``context``."""
    return environment(HERE / "templates").get_template(template).render(**context)


def load_average() -> str:
    """``"a / b / c"`` (1, 5, 15 min), ``n/a`` where the system has none."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_description() -> str:
    """CPU model, cores, RAM, OS, Python and torch of this machine, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPU cores{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def git_revision(root: Path = REPO) -> str:
    """Short commit of ``root``, marked when the code (not the run's own ``results/``) has
    uncommitted changes; ``unknown`` outside a git checkout."""
    try:
        c = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        d = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return (c + (" (with uncommitted changes)" if d else "")) or "unknown"
    except OSError:
        return "unknown"


def minutes(sec: float | None) -> str:
    return "n/a" if sec is None else f"{sec / 60:.1f} min ({sec:.0f} s)"
