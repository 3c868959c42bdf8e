"""Compatibility shims for CPU-only machines (the single place where such shims live).

Each shim is a no-op where it is not needed and is safe to apply more than once. They exist
because the pinned working set (see ``requirements.txt``) cannot be made consistent on a CPU-only
machine through the package registry alone:

(a) ``torchvision``: the registry has no CPU build of ``torchvision==0.28.0``; the CUDA wheel's
    compiled extension ``_C`` cannot load against CPU torch, and then ``import torchvision``
    dies in ``torchvision/_meta_registrations.py`` with
    ``RuntimeError: operator torchvision::nms does not exist`` (it registers fake kernels for
    ``torchvision::nms`` / ``torchvision::qnms`` unconditionally). timm, mmpretrain.models and
    mmseg.models import torchvision at import time. Defining just the two operator *schemas*
    (no kernels) lets torchvision import; its C++ ops stay unusable, and nothing here needs them.

(b) ``mmcv.ops``: ``mmcv-lite`` ships the Python files of ``mmcv.ops`` but not the compiled
    ``mmcv._ext``, so ``import mmcv.ops`` fails, and four mmseg modules import it unguarded
    (``mmseg.models.utils.point_sample``, ``decode_heads/san_head.py``,
    ``models/losses/focal_loss.py``, ``mmseg.utils.mask_classification``). A stand-in
    ``mmcv.ops`` module with a pure-PyTorch :func:`point_sample` lets ``import mmseg.models``
    work and Segformer build and train. Every other name raises ``ModuleNotFoundError`` (the
    exception mmseg's optional imports already catch), except ``sigmoid_focal_loss`` /
    ``softmax_focal_loss``, which ``focal_loss.py`` imports at module level but only *calls*
    for CUDA tensors: they are stubs that raise when called.

Call :func:`apply` before the first import of torchvision / timm / mmpretrain.models /
mmseg.models: ``import lbp_wht.integrations`` does (OpenMMLab configs through
``custom_imports``), ``import lbp_wht`` does not; for ``import lbp_wht, timm`` the start-up hook
of :mod:`lbp_wht.integrations.envhook` calls it on the first import of torchvision or mmcv.

This module must stay light: it imports only torch and the standard library, and never imports
mmcv, torchvision or timm itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["apply", "point_sample", "mmcv_ops_shim_installed", "MMCV_OPS_STANDIN_NAME"]

# Kept at module level on purpose: a torch.library.Library de-registers its definitions when it
# is garbage collected, so the schemas would vanish again if this reference were dropped.
_TORCHVISION_LIB: torch.library.Library | None = None

# Marker attribute set on the stand-in module so tests and users can tell it from the real one.
MMCV_OPS_STANDIN_NAME = "lbp_wht.integrations.compat:mmcv_ops_standin"


def _extension(package: str, stem: str) -> str | None:
    """Path of the compiled extension ``<package>/<stem>.<so suffix>`` (found without importing
    ``package``), None when there is none."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if os.path.exists(path := os.path.join(folder, stem + suffix)):
                return path
    return None


# (a) torchvision CUDA wheel on CPU torch ---------------------------------------------------
def _torch_op_exists(namespace: str, name: str) -> bool:
    """True when ``torch.ops.<namespace>.<name>`` has a registered schema."""
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _torchvision_extension_loads() -> bool:
    """True when torchvision's compiled ``_C`` loads (then torchvision registers its own
    operators), False when it is missing or fails to link (CUDA wheel on CPU torch)."""
    path = _extension("torchvision", "_C")
    if path is None:
        return False
    try:
        # Same call torchvision.extension makes; loading twice is harmless because the dynamic
        # loader returns the already-loaded handle.
        torch.ops.load_library(path)
    except (OSError, ImportError, RuntimeError):
        return False
    return True


def _apply_torchvision_shim() -> bool:
    """Define ``torchvision::nms`` / ``torchvision::qnms`` schemas if torchvision cannot.

    Returns True when the shim is (now or already) in force, False when it is not needed.
    """
    global _TORCHVISION_LIB
    if _TORCHVISION_LIB is not None:
        return True  # idempotent: already applied in this process
    if "torchvision" in sys.modules:
        return False  # torchvision already imported successfully: nothing to fix
    if importlib.util.find_spec("torchvision") is None:
        return False  # not installed: nothing imports it successfully anyway
    if _torch_op_exists("torchvision", "nms"):
        return False  # extension already loaded (e.g. a matching CPU/GPU build)
    if _torchvision_extension_loads() and _torch_op_exists("torchvision", "nms"):
        return False  # the extension works on this machine
    lib = torch.library.Library("torchvision", "DEF")
    # Schemas exactly as torchvision's C++ registers them, so its fake-kernel registrations
    # (torchvision/_meta_registrations.py) find an operator to attach to.
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_LIB = lib
    return True


# (b) mmcv-lite lacks mmcv._ext: stand-in mmcv.ops ------------------------------------------
def point_sample(
    input: torch.Tensor, points: torch.Tensor, align_corners: bool = False, **kwargs: Any
) -> torch.Tensor:
    """Pure-PyTorch ``mmcv.ops.point_sample``: bilinearly sample ``input`` (N, C, H, W) at
    ``points`` (N, P, 2) or (N, Hg, Wg, 2), (x, y) in the ``[0, 1] x [0, 1]`` square of the map
    (x along width), giving (N, C, P) or (N, C, Hg, Wg). ``align_corners`` (mmcv's default False:
    0 and 1 are the outer edges of the corner pixels) and ``**kwargs`` (``mode``,
    ``padding_mode``) go to :func:`torch.nn.functional.grid_sample`."""
    squeeze = points.dim() == 3
    grid = points.unsqueeze(2) if squeeze else points  # (N, P, 1, 2)
    out = F.grid_sample(input, grid * 2.0 - 1.0, align_corners=align_corners, **kwargs)
    return out.squeeze(3) if squeeze else out


def _missing_op_message(name: str) -> str:
    return (
        f"mmcv.ops.{name} needs mmcv's compiled ops (mmcv._ext), which this mmcv build "
        "(mmcv-lite) does not have; lbp_wht.integrations.compat only provides a pure-PyTorch "
        "point_sample. Install full mmcv==2.1.0 (e.g. `mim install mmcv==2.1.0` on a GPU "
        "machine) to use it."
    )


def _make_call_time_stub(name: str) -> Any:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise ModuleNotFoundError(_missing_op_message(name), name="mmcv._ext")

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = f"Stand-in for mmcv.ops.{name}: raises ModuleNotFoundError when called."
    return stub


class _MmcvOpsStandin(types.ModuleType):
    """Module object installed as ``mmcv.ops`` when mmcv's compiled ops are missing."""

    def __getattr__(self, name: str) -> Any:
        # Dunders must raise AttributeError: the import system, inspect, copy and pickle probe
        # them with hasattr() and would otherwise break.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        # ModuleNotFoundError (not AttributeError) so that mmseg's guarded imports such as
        # `try: from mmcv.ops import CrissCrossAttention except ModuleNotFoundError:` take their
        # fallback path, and unguarded uses fail with a message saying what to install.
        raise ModuleNotFoundError(_missing_op_message(name), name="mmcv._ext")


class _MmcvOpsFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Meta-path finder (and loader) that answers ``import mmcv.ops`` with the stand-in, only
    when needed.

    Deciding at import time (rather than in :func:`apply`) means :func:`apply` never has to
    import mmcv (2 s), and the import system itself binds ``mmcv.ops`` on the parent package.
    When the compiled ``mmcv._ext`` exists the finder returns None and the real package loads.
    """

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "mmcv.ops" or _mmcv_has_compiled_ops():
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=False)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        doc = "Stand-in for mmcv.ops (no compiled mmcv._ext available)."
        mod = _MmcvOpsStandin(spec.name, doc)
        mod.point_sample = point_sample
        # Imported unguarded at module level by mmseg/models/losses/focal_loss.py, called only
        # for CUDA tensors (CPU uses mmseg's own py_sigmoid_focal_loss): fail at call time.
        mod.sigmoid_focal_loss = _make_call_time_stub("sigmoid_focal_loss")
        mod.softmax_focal_loss = _make_call_time_stub("softmax_focal_loss")
        mod.__lbp_wht_standin__ = MMCV_OPS_STANDIN_NAME
        mod.__all__ = ["point_sample"]
        return mod

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _mmcv_has_compiled_ops() -> bool:
    """True when mmcv's compiled extension ``mmcv._ext`` is importable (full mmcv build)."""
    return _extension("mmcv", "_ext") is not None


def _apply_mmcv_ops_shim() -> bool:
    """Put the ``mmcv.ops`` finder first on ``sys.meta_path`` when mmcv lacks compiled ops.

    Returns True when the shim is in force, False when it is not needed.
    """
    if any(isinstance(f, _MmcvOpsFinder) for f in sys.meta_path):
        return True  # idempotent
    if "mmcv.ops" in sys.modules:
        return False  # the real mmcv.ops already imported fine
    if importlib.util.find_spec("mmcv") is None or _mmcv_has_compiled_ops():
        return False
    sys.meta_path.insert(0, _MmcvOpsFinder())
    return True


def mmcv_ops_shim_installed() -> bool:
    """True when ``import mmcv.ops`` will be (or was) answered by the stand-in."""
    if any(isinstance(f, _MmcvOpsFinder) for f in sys.meta_path):
        return True
    mod = sys.modules.get("mmcv.ops")
    return getattr(mod, "__lbp_wht_standin__", None) == MMCV_OPS_STANDIN_NAME


def apply() -> dict[str, bool]:
    """Apply every shim this machine needs (idempotent).

    Returns:
        ``{"torchvision": bool, "mmcv_ops": bool}``: which shims are in force.
    """
    return {"torchvision": _apply_torchvision_shim(), "mmcv_ops": _apply_mmcv_ops_shim()}
