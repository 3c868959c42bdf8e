"""Test-session setup.

``lbp_wht.integrations`` applies the CPU-machine compatibility shims (torchvision's CUDA
wheel on CPU torch, mmcv-lite without compiled ops); it must be imported before anything
imports timm / torchvision / mmseg, whichever test file pytest collects first.
"""

import lbp_wht.integrations  # noqa: F401
