"""Stop-gap for the demo's head-only baseline (linear probe) until the core has it.

Issue 6 reports "head only" beside Full BP (the calibration: adapting the backbone must matter).
The pipeline's method list (``lbp_wht.presets.METHODS``, ``lbp_wht.integrations.build.METHODS``)
has no such method yet. This module adds ``"head_only"`` to both tuples at import time; nothing
else is needed, because :func:`lbp_wht.presets.get_preset` already returns, for a method without
conversion rules outside ``("full_bp", "lbp_wht")``, ``trainable`` = the preset's task-head
globs (classification: ``head.*``), so the run trains the new head only, with BatchNorm on
running statistics. Records say ``method: head_only``.

Imported by ``configs/mini/demo/target.py`` (``custom_imports``) and ``scripts/mini_report.py``.
A no-op once the core lists ``"head_only"`` itself; then delete this file and its import.
"""

from __future__ import annotations

from lbp_wht import presets
from lbp_wht.integrations import build

HEAD_ONLY = "head_only"


def apply() -> bool:
    """Add ``head_only`` to the method lists where missing; True when anything changed."""
    changed = False
    for mod in (presets, build):
        if HEAD_ONLY not in mod.METHODS:
            mod.METHODS = (HEAD_ONLY, *mod.METHODS)
            changed = True
    return changed


apply()
