"""Where the repository keeps the inputs and outputs of the reports (a source checkout; the
package is installed editable)."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder holding ``lbp_wht/``, ``configs/`` and ``results/``).
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
RESULTS = REPO / "results"
#: The paper's numbers, typed once from the paper (``results/paper/*.csv``).
PAPER = RESULTS / "paper"
COST = RESULTS / "cost"
LATENCY = RESULTS / "latency"
