"""The compiled memory passes of the LBP-WHT backward (``set_backward_fusion("compiled")``)
give the eager path's gradients, on tokens and NCHW maps, with and without a bias."""

from __future__ import annotations

import shutil

import pytest
import torch
from devices import DEVICES

from lbp_wht import WHTProjector, lbp_forward, select_bases
from lbp_wht.functional import FUSIONS, backward_fusion, set_backward_fusion

NO_CXX = shutil.which("g++") is None and shutil.which("c++") is None


def _grads(x, w, b, proj, layout, g):
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    inputs = [x, w] + ([b.clone().requires_grad_(True)] if b is not None else [])
    y = lbp_forward(x, w, inputs[2] if b is not None else None, proj, layout)
    return torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout,mode", [("tokens", "compiled"), ("nchw", "compiled"),
                                         ("tokens", "compiled_back")])  # fmt: skip
def test_compiled_passes_match_eager(device, layout, mode):
    """On CUDA the kernels are Triton's; on the CPU, C++ (skipped without a compiler)."""
    if device == "cpu" and NO_CXX:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    torch.manual_seed(0)
    proj = WHTProjector((7, 7), select_bases("lp_l1", radius=4))
    cx, cy, bsz = 16, 24, 3
    if layout == "tokens":
        x, g, bias = torch.randn(bsz, 49, cx), torch.randn(bsz, 49, cy), torch.randn(cy)
    else:
        x, g, bias = torch.randn(bsz, cx, 7, 7), torch.randn(bsz, cy, 7, 7), None
    w = torch.randn(cy, cx)
    x, g, w = x.to(device), g.to(device), w.to(device)
    bias = bias.to(device) if bias is not None else None
    want = _grads(x, w, bias, proj, layout, g)
    with backward_fusion(mode):
        got = _grads(x, w, bias, proj, layout, g)
    for a, e in zip(got, want):
        assert a.shape == e.shape and a.is_contiguous()
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_fusion_mode_is_checked_and_restored():
    assert FUSIONS == ("eager", "compiled", "compiled_back")
    with pytest.raises(ValueError, match="unknown backward fusion 'triton'"):
        set_backward_fusion("triton")
    with backward_fusion("compiled"):
        assert set_backward_fusion("compiled") == "compiled"
    assert set_backward_fusion("eager") == "eager"
