"""Fresh interpreters with or without lbp_wht's start-up hook (lbp_wht.integrations.envhook).

The hook is a ``.pth`` file in site-packages (``make setup`` writes it into the venv). Tests do
not rely on the venv having it: :func:`hook_site` writes it into a folder of their own, and
:func:`run_python` processes that folder as ``site`` does site-packages at start-up
(``site.addsitedir``) before running the code. Without a folder the hook is off, also one
installed in the venv (``LBP_WHT_COMPAT_HOOK=0``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from lbp_wht.integrations import envhook


def hook_site(folder: Path) -> Path:
    """``folder`` with the hook's ``.pth`` written into it, as ``make setup`` writes it."""
    envhook.install_pth(folder)
    return folder


def run_python(
    code: str,
    *,
    site_dir: Path | None = None,
    before_site: str = "",
    flags: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; ``site_dir``: a :func:`hook_site` folder (hook on),
    None: hook off. ``before_site``: code run before the folder is processed."""
    env = dict(os.environ if env is None else env)
    if site_dir is None:
        env[envhook.ENV_VAR] = "0"
        prelude = ""
    else:
        env.pop(envhook.ENV_VAR, None)
        prelude = f"{before_site}\nimport site; site.addsitedir({str(site_dir)!r})\n"
    return subprocess.run(
        [sys.executable, *flags, "-c", prelude + code],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def run_script(script: Path, *, site_dir: Path | None, env: dict[str, str] | None = None):
    """Run ``script`` as ``python script`` would, with or without the hook (:func:`run_python`)."""
    code = (
        f"import runpy, sys; sys.argv = [{str(script)!r}]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return run_python(code, site_dir=site_dir, env=env)
