"""CPU compatibility shims (lbp_wht.integrations.compat): imports work, apply() is idempotent,
the stand-in mmcv.ops behaves like the parts of mmcv that mmseg needs. The start-up hook that
applies them for a plain ``import timm`` is tested in test_envhook.py."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from hooked import run_python

import lbp_wht.integrations  # noqa: F401  (applies the shims before the imports below)
from lbp_wht.integrations import compat

pytest.importorskip("mmcv")


def test_apply_is_idempotent():
    first = compat.apply()
    lib = compat._TORCHVISION_LIB
    finders = [f for f in sys.meta_path if isinstance(f, compat._MmcvOpsFinder)]
    assert compat.apply() == first
    assert compat.apply() == first
    assert compat._TORCHVISION_LIB is lib  # schemas defined once, never redefined
    again = [f for f in sys.meta_path if isinstance(f, compat._MmcvOpsFinder)]
    assert again == finders and len(again) <= 1


def test_heavy_imports_work_after_shims():
    # The imports that fail on this machine without the shims (NOTES-env.md).
    for name in ("torchvision", "timm", "mmpretrain.models", "mmseg.models"):
        importlib.import_module(name)
    assert torch.ops.torchvision.nms is not None  # schema known (kernel may be absent)


def test_fresh_process_imports_torchvision_and_mmcv_ops():
    # A fresh interpreter: importing lbp_wht.integrations alone must make torchvision and
    # mmcv.ops importable (what `custom_imports` relies on in configs).
    code = textwrap.dedent(
        """
        import lbp_wht.integrations as I
        import torchvision, mmcv.ops
        from mmcv.ops import point_sample
        state = I.compat.apply()
        print(state["torchvision"], state["mmcv_ops"], I.compat.mmcv_ops_shim_installed())
        """
    )
    out = run_python(code, timeout=300)  # the start-up hook off: the package import alone
    assert out.returncode == 0, out.stderr[-2000:]
    tv, ops, installed = out.stdout.split()[-3:]
    # Consistency: the mmcv.ops shim is in force exactly when compiled ops are missing.
    assert (ops == "True") == (not compat._mmcv_has_compiled_ops()) == (installed == "True")


@pytest.mark.skipif(compat._mmcv_has_compiled_ops(), reason="full mmcv: no stand-in needed")
def test_mmcv_ops_standin_behaviour():
    import mmcv.ops

    assert getattr(mmcv.ops, "__lbp_wht_standin__", None) == compat.MMCV_OPS_STANDIN_NAME
    assert mmcv.ops.point_sample is compat.point_sample
    assert not hasattr(mmcv.ops, "__path__")  # dunders: AttributeError, not an import error
    with pytest.raises(ModuleNotFoundError, match="mmcv._ext"):
        from mmcv.ops import CrissCrossAttention  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match="full mmcv"):
        mmcv.ops.sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    # mmseg's guarded optional imports took their fallback paths
    cc_head = importlib.import_module("mmseg.models.decode_heads.cc_head")
    assert cc_head.CrissCrossAttention is None
    point_head = importlib.import_module("mmseg.models.decode_heads.point_head")
    assert point_head.point_sample is compat.point_sample


def test_mmcv_finder_is_noop_when_compiled_ops_exist(monkeypatch):
    finder = compat._MmcvOpsFinder()
    monkeypatch.setattr(compat, "_mmcv_has_compiled_ops", lambda: True)
    assert finder.find_spec("mmcv.ops") is None
    monkeypatch.setattr(compat, "_mmcv_has_compiled_ops", lambda: False)
    assert finder.find_spec("mmcv.ops") is not None
    assert finder.find_spec("mmcv.cnn") is None  # only ever answers for mmcv.ops


def test_torchvision_shim_noop_once_torchvision_imported():
    import torchvision  # noqa: F401

    # Already imported: the shim must not (re)define anything; state is unchanged.
    before = compat._TORCHVISION_LIB
    assert compat._apply_torchvision_shim() == (before is not None)
    assert compat._TORCHVISION_LIB is before


def _bilinear_reference(img: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Direct bilinear sampling, zero outside the map; points (P, 2) as (x, y) in [0, 1]."""
    c, h, w = img.shape
    out = torch.zeros(c, len(points), dtype=img.dtype)
    for p, (px, py) in enumerate(points.tolist()):
        # align_corners=False: 0 and 1 are the outer edges, pixel centres at (i + 0.5) / size
        u, v = px * w - 0.5, py * h - 0.5
        x0, y0 = int(torch.floor(torch.tensor(u))), int(torch.floor(torch.tensor(v)))
        for dy in (0, 1):
            for dx in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                wt = (1 - abs(u - xi)) * (1 - abs(v - yi))
                if 0 <= xi < w and 0 <= yi < h:
                    out[:, p] += wt * img[:, yi, xi]
    return out


def test_point_sample_matches_direct_bilinear():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    pts = torch.rand(2, 11, 2, generator=g, dtype=torch.float64)
    pts[:, 0] = torch.tensor([0.0, 0.0])  # corner: only a quarter of a pixel inside
    pts[:, 1] = torch.tensor([1.0, 0.5])  # right edge
    out = compat.point_sample(img, pts)
    assert out.shape == (2, 3, 11)
    for n in range(2):
        torch.testing.assert_close(out[n], _bilinear_reference(img[n], pts[n]))
    # 4-D grids keep their shape: (N, Hg, Wg, 2) -> (N, C, Hg, Wg)
    grid = pts.view(2, 11, 1, 2)
    torch.testing.assert_close(compat.point_sample(img, grid)[..., 0], out)
    # pixel centres reproduce the pixels exactly
    centre = torch.tensor([[[(2 + 0.5) / 7, (3 + 0.5) / 5]]], dtype=torch.float64)
    torch.testing.assert_close(compat.point_sample(img[:1], centre)[0, :, 0], img[0, :, 3, 2])


def test_shims_are_noops_where_the_libraries_load(monkeypatch):
    """Where torchvision is loaded or its operators are registered, no schema is defined."""
    monkeypatch.setattr(compat, "_TORCHVISION_LIB", None)
    monkeypatch.setattr(compat, "_torch_op_exists", lambda ns, name: True)
    assert compat._apply_torchvision_shim() is False and compat._TORCHVISION_LIB is None
