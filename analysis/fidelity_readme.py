"""The gradient-fidelity report, ``results/fidelity/README.md`` (``tools/analyze_gradients.py``,
``scripts/reproduce_fidelity.sh``; template ``templates/fidelity_readme.md.j2``).

From the rows of :func:`lbp_wht.integrations.fidelity.analyze_config` (their CSVs and figures
come from the package: :func:`lbp_wht.reporting.tables.write_fidelity_csvs`,
:func:`lbp_wht.reporting.figures.plot_fidelity_layers` and ``plot_fidelity_selections``):
protocol, machine, date, command, the numbers, and the reading against the accuracy of the CPU
demo's proxy Tables 2 and 4 (:func:`verdicts.accuracy_reading`: does the mean ``g_w`` cosine
order the selections as their accuracy does?), with the verdict computed from the numbers.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import pandas as pd
from report_common import machine_description, render
from verdicts import accuracy_reading

from lbp_wht.experiments.vocab import num_bases
from lbp_wht.io import atomic_write
from lbp_wht.reporting.tables import FIDELITY_METRICS, fidelity_summary

__all__ = ["write_readme", "machine_description"]


def write_readme(
    out: Path,
    df: pd.DataFrame,
    *,
    command: str,
    machine: str,
    seconds: float | None,
    meta: dict[str, Any],
    mini_dir: Path | None = None,
) -> Path:
    """``out/README.md`` from the rows (``df``) and the run's facts (``meta``: config,
    checkpoints, batch, seed, layers)."""
    s = fidelity_summary(df)
    states = list(dict.fromkeys(s["state"]))

    def pick(label: str, pad: str, state: str) -> dict[str, float]:
        """The layer means of one selection (NaN, shown as n/a, where it was not run)."""
        hit = s[(s["selection"] == label) & (s["padding"] == pad) & (s["state"] == state)]
        return hit.iloc[0].to_dict() if not hit.empty else dict.fromkeys(FIDELITY_METRICS, math.nan)

    full_r = int(s[s["family"] == "lp_l1"]["param"].max())  # LP_L1 with every base
    full = {
        (st, pad): pick(f"LP_L1-{full_r}", pad, st) for st in states for pad in ("zero", "reflect")
    }
    lp_rs = sorted({int(p) for p in s[s["family"] == "lp_l1"]["param"] if int(p) <= 8})
    text = render(
        "fidelity_readme.md.j2",
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        machine=machine,
        minutes=None if seconds is None else f"{seconds / 60:.1f} min ({seconds:.0f} s)",
        meta=meta,
        states=states,
        lp=[
            (
                r,
                num_bases("lp_l1", r),
                {st: pick(f"LP_L1-{r}", "reflect", st) for st in states},
                {st: pick(f"LP_L1-{r}", "zero", st) for st in states},
            )
            for r in lp_rs
        ],
        at10={
            st: [(lab, pick(lab, "reflect", st)) for lab in ("LP_L1-4", "LP_Linf-3", "LHE-10")]
            for st in states
        },
        full=full,
        types=sorted(set(df["layer_type"])),
        reading=accuracy_reading(df, mini_dir),
        fmt=format,
    )
    return atomic_write(out / "README.md", text)
