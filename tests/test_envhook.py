"""The start-up hook (lbp_wht.integrations.envhook): ``import lbp_wht, timm`` works through it on
machines whose torchvision needs the CPU shims, ``import lbp_wht.integrations`` first works
without it, and it costs nothing and breaks nothing where it is not needed."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from hooked import hook_site, run_python

from lbp_wht.integrations import envhook

ROOT = Path(__file__).resolve().parents[1]
HOOKS_ON_META_PATH = "sum(bool(getattr(f, 'lbp_wht_compat_hook', False)) for f in sys.meta_path)"


@pytest.mark.parametrize(
    "imports",
    [
        "import lbp_wht, timm",
        "import timm, lbp_wht",
        "import lbp_wht; import mmseg.models; import mmpretrain.models; import timm",
    ],
)
def test_timm_and_openmmlab_import_through_the_hook(imports, tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("mmseg")
    code = f"{imports}\nimport sys\nprint({HOOKS_ON_META_PATH})\n"
    out = run_python(code, site_dir=hook_site(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "0", "the hook fired, so it must have removed itself"


def test_integrations_first_then_timm_without_the_hook():
    pytest.importorskip("timm")
    pytest.importorskip("mmseg")
    code = (
        "import lbp_wht.integrations, timm\nimport mmseg.models, mmpretrain.models\nimport sys\n"
        f"print({HOOKS_ON_META_PATH})\n"
    )
    out = run_python(code)  # LBP_WHT_COMPAT_HOOK=0: off even where the venv has it
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "0"


def test_hook_is_lazy_and_can_be_switched_off(tmp_path):
    """Until torchvision or mmcv is imported, the hook is one finder on sys.meta_path and has
    imported neither lbp_wht nor torch; ``LBP_WHT_COMPAT_HOOK=0`` leaves it out."""
    site_dir = hook_site(tmp_path)
    code = (
        "import sys, json, email.message, xml.dom.minidom, sqlite3\n"
        f"print({HOOKS_ON_META_PATH}, 'lbp_wht' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = run_python(code, site_dir=site_dir)
    assert out.returncode == 0 and not out.stderr, out.stderr[-3000:]
    assert out.stdout.split() == ["1", "False", "False"]
    # run_python without a site folder sets LBP_WHT_COMPAT_HOOK=0: the .pth then installs nothing
    off = run_python(f"import site, sys\nsite.addsitedir({str(site_dir)!r})\n" + code)
    assert off.returncode == 0 and off.stdout.split() == ["0", "False", "False"], off.stderr


def _fake_package(root: Path, init: str, envhook_source: str | None = None) -> Path:
    pkg = root / "lbp_wht"
    (pkg / "integrations").mkdir(parents=True)
    (pkg / "__init__.py").write_text(init)
    (pkg / "integrations" / "__init__.py").write_text("")
    if envhook_source is None:
        shutil.copy(Path(envhook.__file__), pkg / "integrations" / "envhook.py")
    else:
        (pkg / "integrations" / "envhook.py").write_text(envhook_source)
    return root


@pytest.mark.parametrize("case", ["no lbp_wht", "broken envhook", "no torch"])
def test_startup_never_breaks(case, tmp_path):
    """Isolated interpreters (``-I -S``: no venv, no PYTHONPATH) where lbp_wht is missing, its
    hook file raises, or torch is missing: start-up stays silent, and an import that fires the
    hook fails only as it would without it."""
    site_dir = hook_site(tmp_path / "site")
    path = []
    if case == "broken envhook":
        path = [_fake_package(tmp_path / "fake", "", "raise RuntimeError('broken hook file')\n")]
    elif case == "no torch":
        path = [_fake_package(tmp_path / "fake", "import torch\n")]
    code = (
        f"print({HOOKS_ON_META_PATH})\n"
        "try:\n    import mmcv\nexcept ModuleNotFoundError as err:\n    print(err.name)\n"
        f"print({HOOKS_ON_META_PATH})\n"
    )
    out = run_python(
        code,
        site_dir=site_dir,
        before_site=f"import sys; sys.path[:0] = {[str(p) for p in path]!r}",
        flags=("-I", "-S"),
        cwd=tmp_path,  # no lbp_wht in the current folder either
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr == ""
    installed = "1" if case == "no torch" else "0"
    assert out.stdout.split() == [installed, "mmcv", "0"]


def test_install_writes_the_pth_whole_and_uninstall_removes_it(tmp_path):
    path = envhook.install_pth(tmp_path)
    assert path == tmp_path / envhook.PTH_NAME
    assert path.read_text() == envhook.pth_text()
    assert [p.name for p in tmp_path.iterdir()] == [envhook.PTH_NAME]  # no temporary left
    code_lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert len(code_lines) == 1 and code_lines[0].startswith("import ")  # what site executes
    envhook.install_pth(tmp_path)  # idempotent
    assert [p.name for p in tmp_path.iterdir()] == [envhook.PTH_NAME]
    assert envhook.uninstall_pth(tmp_path) == path and not path.exists()
    assert envhook.uninstall_pth(tmp_path) is None


def test_command_line_and_makefile_install_it(tmp_path):
    out = run_python(
        "from lbp_wht.integrations.envhook import main\n"
        f"raise SystemExit(main(['--install', '--site-dir', {str(tmp_path)!r}]))\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / envhook.PTH_NAME).read_text() == envhook.pth_text()
    # `make setup` (the $(STAMP) rule that `make test` depends on) installs it into the venv
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = makefile[makefile.index("$(STAMP):") : makefile.index("touch $(STAMP)")]
    assert "$(BIN)/python -m lbp_wht.integrations.envhook --install" in stamp_rule


def test_hook_in_process_answers_like_the_finders_behind_it(monkeypatch):
    """Fired in this process: it removes itself, applies the shims and returns the spec the
    other finders give (a non-trigger name is never touched)."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv(envhook.ENV_VAR, raising=False)
    assert envhook.install() and envhook.hook_installed()
    hook = sys.meta_path[0]
    assert hook.find_spec("json") is None and envhook.hook_installed()
    spec = hook.find_spec("torchvision")
    assert not envhook.hook_installed()
    expected = importlib.util.find_spec("torchvision")
    assert (spec is None) == (expected is None)
    if spec is not None:
        assert spec.origin == expected.origin
    monkeypatch.setenv(envhook.ENV_VAR, "0")
    assert envhook.install() is False and not envhook.hook_installed()
