"""The method core's boundary (docs/ARCHITECTURE.md): its modules import only torch, numpy, the
standard library and each other, and ``import lbp_wht`` has no side effects."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hooked import hook_site, run_python

#: The core: every top-level module of the package. A new top-level module must be core (and is
#: added here); harness code goes into a subpackage (experiments, runs, benchmark, reporting,
#: integrations).
CORE = frozenset(
    {
        "__init__",
        "adapters",
        "bases",
        "callsite",
        "config",
        "conversion",
        "cost",
        "fidelity",
        "functional",
        "geometry",
        "hot",
        "instant",
        "io",
        "layers",
        "lhe",
        "lora",
        "lora_fa",
        "losa",
        "measure",
        "projection",
        "rowwise",
        "saving",
        "tracing",
        "velora",
        "wta_crs",
    }
)
#: The only packages outside the standard library that the core may import.
CORE_DEPENDENCIES = frozenset({"torch", "numpy"})
#: Libraries the harness uses and ``import lbp_wht`` must not import.
HARNESS_LIBRARIES = (
    "torchvision",
    "timm",
    "transformers",
    "mmengine",
    "mmcv",
    "mmpretrain",
    "mmseg",
    "pandas",
    "matplotlib",
    "jinja2",
    "submitit",
    "filelock",
)

# The package that runs (PYTHONPATH or the editable install), found without importing it.
PACKAGE = Path(importlib.util.find_spec("lbp_wht").submodule_search_locations[0])


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in ``path``, at any depth: ``import``,
    ``from ... import`` (relative ones resolved; a name that is a submodule counts as one) and
    ``importlib.import_module`` / ``__import__`` of a constant string."""
    found: list[tuple[int, str]] = []

    def add_from(node: ast.ImportFrom, base: str) -> None:
        if node.module:
            base = f"{base}.{node.module}" if base else node.module
        found.append((node.lineno, base))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            parts = sub.split(".")
            if parts[0] == "lbp_wht":
                rel = PACKAGE.joinpath(*parts[1:])
                if rel.with_suffix(".py").is_file() or rel.is_dir():
                    found.append((node.lineno, sub))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                add_from(node, "")
            elif node.level == 1:  # a top-level module's `.` is the package
                add_from(node, "lbp_wht")
            else:
                found.append((node.lineno, "." * node.level + (node.module or "")))
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _allowed(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == "lbp_wht":
        return len(parts) == 1 or (len(parts) == 2 and parts[1] in CORE)
    return parts[0] in CORE_DEPENDENCIES or parts[0] in sys.stdlib_module_names


def test_top_level_modules_are_exactly_the_core():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == CORE, (
        f"top-level modules not in the core set: {sorted(top - CORE)} (harness code belongs in "
        f"a subpackage); core modules missing: {sorted(CORE - top)}"
    )


@pytest.mark.parametrize("module", sorted(CORE))
def test_core_imports_only_torch_numpy_stdlib_and_core(module):
    path = PACKAGE / f"{module}.py"
    bad = [
        f"{path.name}:{line}: {name}" for line, name in _imported_names(path) if not _allowed(name)
    ]
    assert not bad, "core module imports outside the core:\n" + "\n".join(bad)


def test_the_import_check_sees_what_it_must(tmp_path):
    # The checker itself: function-level, relative and string imports are all seen.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from . import lhe, presets\nfrom .integrations import compat\n"
        "def f():\n    import mmengine\n    from ..x import y\n"
        "    importlib.import_module('lbp_wht.runs.sweep')\n"
    )
    names = {name for _, name in _imported_names(probe)}
    assert {"lbp_wht.lhe", "lbp_wht.integrations", "lbp_wht.integrations.compat"} <= names
    assert {"mmengine", "..x", "lbp_wht.runs.sweep"} <= names
    assert not any(_allowed(n) for n in ("mmengine", "..x", "lbp_wht.runs.sweep", "pandas"))
    assert all(_allowed(n) for n in ("lbp_wht.lhe", "torch.nn", "numpy", "os.path", "lbp_wht"))


_PROBE = """
import json, sys
before = list(sys.meta_path)
import lbp_wht
import torch

def has_op(name):
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True

print(json.dumps(dict(
    meta_path_unchanged=len(sys.meta_path) == len(before)
    and all(a is b for a, b in zip(sys.meta_path, before)),
    libraries=sorted({m.split(".")[0] for m in sys.modules} & set(HARNESS)),
    harness=sorted(
        m for m in sys.modules if m.startswith("lbp_wht.") and m.split(".")[1] in SUBPACKAGES
    ),
    torchvision_ops=[n for n in ("nms", "qnms") if has_op(n)],
)))
"""


@pytest.mark.parametrize("with_hook", [False, True], ids=["plain", "hook-installed"])
def test_import_lbp_wht_has_no_side_effects(with_hook, tmp_path):
    """A fresh ``import lbp_wht`` changes no import machinery, imports no harness library or
    subpackage and defines no torchvision operator, also where the start-up hook is installed
    (importing the core must not fire it)."""
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    code = f"HARNESS = {HARNESS_LIBRARIES!r}\nSUBPACKAGES = {subpackages!r}\n" + _PROBE
    out = run_python(code, site_dir=hook_site(tmp_path) if with_hook else None)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state == dict(meta_path_unchanged=True, libraries=[], harness=[], torchvision_ops=[])
