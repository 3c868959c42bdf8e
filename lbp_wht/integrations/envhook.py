"""Lazy environment hook: the CPU shims of :mod:`.compat` for a plain ``import timm``.

Why: ``import lbp_wht`` has no side effects; the shims are applied by ``import
lbp_wht.integrations`` (OpenMMLab configs through ``custom_imports``, every tool of this project
before it imports timm or OpenMMLab). Code that uses only the core with timm (``import lbp_wht,
timm``, ``examples/timm_vit_lbp.py``) never imports the integration layer, and on a CPU-only
machine whose registry's torchvision is a CUDA build ``import timm`` then dies inside torchvision
(``operator torchvision::nms does not exist``, see :mod:`.compat`). ``make setup`` writes
``lbp_wht_compat_hook.pth`` into the venv's site-packages; its one line, run by :mod:`site` at
interpreter start-up, puts a :class:`CompatHook` first on ``sys.meta_path``. The hook does
nothing until the first import of ``torchvision`` or ``mmcv``; then it removes itself, applies
:func:`lbp_wht.integrations.compat.apply` and lets that import proceed. Where torchvision imports
by itself (GPU machines) ``compat.apply()`` does nothing; where it needs the shims and the hook
is not installed, import ``lbp_wht.integrations`` before timm.

Cost: the line locates ``lbp_wht`` (``importlib.util.find_spec``, which imports nothing) and
loads this file under a private name: 0.7 ms per interpreter start on a 2-core CPU machine (2.7
ms with ``PYTHONDONTWRITEBYTECODE``). Each later import costs the hook one set lookup until it
fires; a process that never imports torchvision or mmcv never imports lbp_wht or torch because
of it. Every step of the line is guarded: a missing or broken lbp_wht or torch leaves
interpreter start-up untouched. ``LBP_WHT_COMPAT_HOOK=0`` in the environment switches it off.

Install or remove it (the interpreter's own site-packages unless ``--site-dir``)::

    python -m lbp_wht.integrations.envhook --install
    python -m lbp_wht.integrations.envhook --uninstall

This module must stay standard library only and free of relative imports: the ``.pth`` line
loads it by its file path, without importing the ``lbp_wht`` package.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# Start-up cost: the .pth line loads this file in every interpreter of the venv, so the module
# level imports only what that line needs anyway; the rest is imported where used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

__all__ = [
    "ENV_VAR",
    "PTH_NAME",
    "TRIGGERS",
    "CompatHook",
    "hook_installed",
    "install",
    "install_pth",
    "pth_text",
    "uninstall",
    "uninstall_pth",
]

#: ``LBP_WHT_COMPAT_HOOK=0`` switches the hook off (read at start-up and by :func:`install`).
ENV_VAR = "LBP_WHT_COMPAT_HOOK"
#: The file written into site-packages; sorts after setuptools' ``__editable__.*.pth``, so an
#: editable install's finder is in place when the line looks for ``lbp_wht``.
PTH_NAME = "lbp_wht_compat_hook.pth"
#: Top-level imports that fire the hook: those that need a shim of :mod:`.compat`.
TRIGGERS = frozenset({"torchvision", "mmcv"})
#: Attribute marking the hook on ``sys.meta_path``: this file may be loaded twice (by the
#: ``.pth`` line under a private name, and as ``lbp_wht.integrations.envhook``), so its class
#: may exist twice and ``isinstance`` cannot tell.
_MARK = "lbp_wht_compat_hook"

# Run by the .pth line, in a namespace of its own. Finds lbp_wht without importing it and loads
# this file by path; any failure leaves start-up as it was.
_BOOTSTRAP = """
def _load():
    import os
    if os.environ.get("LBP_WHT_COMPAT_HOOK", "1") == "0":
        return
    import importlib.util as u
    spec = u.find_spec("lbp_wht")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "integrations", "envhook.py")
        if os.path.isfile(path):
            hook = u.spec_from_file_location("_lbp_wht_envhook", path)
            module = u.module_from_spec(hook)
            hook.loader.exec_module(module)
            module.install()
            return
try:
    _load()
except Exception:
    pass
"""


class CompatHook:
    """``sys.meta_path`` finder that applies the CPU shims on the first torchvision / mmcv import.

    It never provides a module itself: when it fires it removes every hook from
    ``sys.meta_path``, applies :func:`lbp_wht.integrations.compat.apply`, and answers with the
    spec the remaining finders give (so the import proceeds as if the hook had never been there,
    with the shims in force).
    """

    lbp_wht_compat_hook = True

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in TRIGGERS:
            return None
        uninstall()
        _apply_shims()
        # Resolved by the finders left, not by returning None: the import system is iterating
        # sys.meta_path and uninstall() just shortened it, so returning None could skip one.
        return importlib.util.find_spec(fullname)


def _apply_shims() -> None:
    try:
        from lbp_wht.integrations import compat

        compat.apply()
    except Exception as err:
        if isinstance(err, ImportError) and err.name in {"lbp_wht", "torch"}:
            return  # nothing to shim with; the import goes on as it would without the hook
        import warnings

        warnings.warn(
            f"lbp_wht's compat hook could not apply the CPU shims ({type(err).__name__}: {err});"
            " `import lbp_wht.integrations` shows the full error",
            RuntimeWarning,
            stacklevel=2,
        )


def hook_installed() -> bool:
    """True when a :class:`CompatHook` (of either copy of this module) is on ``sys.meta_path``."""
    return any(getattr(f, _MARK, False) for f in sys.meta_path)


def install() -> bool:
    """Put the hook first on ``sys.meta_path`` (idempotent); False when switched off."""
    if os.environ.get(ENV_VAR, "1") == "0":
        return False
    if not hook_installed():
        sys.meta_path.insert(0, CompatHook())
    return True


def uninstall() -> None:
    """Remove every hook from ``sys.meta_path`` (in place: the import system holds the list)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, _MARK, False)]


# The .pth file ------------------------------------------------------------------------------
def pth_text() -> str:
    """The content of ``lbp_wht_compat_hook.pth``: a comment and the one line ``site`` runs."""
    return (
        "# lbp_wht: applies lbp_wht.integrations.compat on the first import of torchvision or "
        "mmcv (CPU machines); see lbp_wht/integrations/envhook.py. Remove with "
        "`python -m lbp_wht.integrations.envhook --uninstall`.\n"
        f"import sys; exec({_BOOTSTRAP!r}, {{}})\n"
    )


def _site_dir(site_dir: str | os.PathLike | None) -> Path:
    import sysconfig
    from pathlib import Path

    return Path(site_dir if site_dir is not None else sysconfig.get_paths()["purelib"])


def install_pth(site_dir: str | os.PathLike | None = None) -> Path:
    """Write ``lbp_wht_compat_hook.pth`` into ``site_dir`` (default: this interpreter's
    site-packages) atomically; returns its path.

    The content is written whole under a name that does not end in ``.pth`` (``site`` would run
    a half-written one at a concurrent start-up: it reads hidden ``.pth`` files too) and then
    renamed into place.
    """
    from lbp_wht.io import atomic_write

    target = _site_dir(site_dir) / PTH_NAME
    pending = atomic_write(target.with_name(f".{PTH_NAME}.pending"), pth_text())
    os.replace(pending, target)
    return target


def uninstall_pth(site_dir: str | os.PathLike | None = None) -> Path | None:
    """Remove ``lbp_wht_compat_hook.pth`` from ``site_dir``; returns its path, None if absent."""
    target = _site_dir(site_dir) / PTH_NAME
    try:
        target.unlink()
    except FileNotFoundError:
        return None
    return target


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m lbp_wht.integrations.envhook",
        description="Install or remove the start-up hook that applies lbp_wht's CPU shims on "
        "the first import of torchvision / mmcv (see this module's docstring).",
    )
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--install", action="store_true", help=f"write {PTH_NAME}")
    action.add_argument("--uninstall", action="store_true", help=f"remove {PTH_NAME}")
    p.add_argument(
        "--site-dir",
        help=f"the site-packages folder (default: this interpreter's, {_site_dir(None)})",
    )
    args = p.parse_args(argv)
    if args.install:
        print(f"envhook: wrote {install_pth(args.site_dir)}")
    else:
        removed = uninstall_pth(args.site_dir)
        print(f"envhook: removed {removed}" if removed else "envhook: no hook installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
