"""Where the repository keeps the inputs and outputs of the reports (a source checkout; the
package is installed editable). The checkout, its ``configs/`` and the paper reference are
the catalogue's (:mod:`lbp_wht.experiments.catalog`)."""

from __future__ import annotations

from ..experiments.catalog import CONFIGS_DIR as CONFIGS
from ..experiments.catalog import PAPER_DIR as PAPER
from ..experiments.catalog import REPO_ROOT as REPO

__all__ = ["REPO", "CONFIGS", "PAPER", "RESULTS", "COST", "LATENCY"]

RESULTS = REPO / "results"
#: ``results/cost``: the cost tables and their records.
COST = RESULTS / "cost"
#: ``results/latency``: the benchmark CSVs, Markdown and figures.
LATENCY = RESULTS / "latency"
