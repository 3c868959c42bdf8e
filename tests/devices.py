"""``DEVICES``: the ``device`` parametrisation of the tests that run on an accelerator too.

``cpu`` always runs; ``cuda`` carries the ``cuda`` marker (``pytest -m cuda`` selects it) and is
skipped, with the reason, where ``torch.cuda.is_available()`` is False.
"""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device (torch.cuda.is_available())"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)]
    ),
]
