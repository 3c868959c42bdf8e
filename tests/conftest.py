"""Test-session setup.

``lbp_wht.integrations`` applies the CPU-machine compatibility shims (torchvision's CUDA
wheel on CPU torch, mmcv-lite without compiled ops); it must be imported before anything
imports timm / torchvision / mmseg, whichever test file pytest collects first.
"""

import pytest  # noqa: E402

import lbp_wht.integrations  # noqa: F401


@pytest.fixture(autouse=True)
def _isolate_mmengine_default_scope():
    """Give every test the mmengine default scope it started with.

    mmengine keeps the default registry scope in a process-wide ``DefaultScope`` instance dict;
    a test that builds an mmseg runner or model in-process otherwise leaves ``mmseg`` as the
    current scope, and a later mmpretrain runner then looks its visualizer up in the wrong
    registry.
    """
    import sys

    if "mmengine.registry" not in sys.modules:
        yield
        return
    from mmengine.registry import DefaultScope

    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
