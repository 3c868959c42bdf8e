"""The EfficientNet-Lite0 transfer report, ``results/transfer/`` (``tools/transfer.py``,
``scripts/reproduce_transfer.sh``), from the run of
:func:`lbp_wht.integrations.transfer.run_transfer`.

* ``runs/<tag>_s<seed>.json``: one record per run (``lbp_wht.runs.records`` format); ``cost.csv``:
  backprop MFLOPs, saved activations and trainable parameters per method; ``table.csv`` /
  ``table.md``: the table (:func:`lbp_wht.reporting.tables.transfer_rows`, accuracy mean ±
  sample std over seeds);
* ``figure.png/.pdf`` (:func:`lbp_wht.reporting.figures.plot_transfer`), ``figure_data.csv``;
* ``RESULTS.md`` (template ``templates/transfer_results.md.j2``): protocol, machine, time, the
  table and the verdicts of ``analysis/verdicts.py`` (:func:`verdicts.transfer_verdicts`: the
  CPU demo's claims on the BatchNorm-eval rows and the BatchNorm claim).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from report_common import git_revision, load_average, machine_description, minutes, render
from verdicts import CLOSE, SIMILAR_COST, acc_text, se2_text, transfer_verdicts

from lbp_wht.io import atomic_write
from lbp_wht.reporting import figures, tables
from lbp_wht.reporting.render import write_rows_csv
from lbp_wht.runs.records import write_record


def write_report(
    out: Path,
    run: Any,
    *,
    command: str,
    smoke: bool = False,
    load_start: str = "n/a",
    total_s: float | None = None,
) -> Path:
    """Write every file of ``results/transfer/`` (module docstring) from ``run`` (a
    :class:`lbp_wht.integrations.transfer.TransferRun`); returns the RESULTS.md path."""
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "runs").glob("*.json") if (out / "runs").exists() else []:
        old.unlink()
    for rec in run.records:
        write_record(
            out / "runs" / f"{rec['tag']}_s{rec['seed']}.json", {"kind": "transfer", **rec}
        )
    records = list(run.records)
    write_rows_csv(out / "cost.csv", run.costs, float_format="{:.6g}")
    rows = tables.transfer_rows(records, run.costs, [m.tag for m in run.methods])
    write_rows_csv(out / "table.csv", rows, float_format="{:.4f}")
    table = tables.transfer_markdown(rows)
    atomic_write(out / "table.md", "# EfficientNet-Lite0 -> Fashion-MNIST\n\n" + table + "\n")
    figs = figures.plot_transfer(rows, out)
    write_rows_csv(out / "figure_data.csv", rows, ["tag", "bn", "mflops", "acc", "acc_std", "n"],
                   "{:.4f}")  # fmt: skip
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = {k: round(v) for k, v in run.stages.items()}
    total = total_s if total_s is not None else sum(run.stages.values())
    timing = dict(stages_s=stages, total_s=round(total), command=command, date=date)
    atomic_write(out / "timing.json", json.dumps(timing, indent=2) + "\n")
    load_end = load_average()
    p = run.protocol
    text = render(
        "transfer_results.md.j2",
        smoke=smoke,
        date=date,
        command=command,
        machine=machine_description(),
        load_start=load_start,
        load_end=load_end,
        git=git_revision(),
        total=minutes(total),
        stages=list(stages.items()),
        jobs=run.jobs,
        protocol=p,
        seeds=run.seeds,
        n_train=p.train_per_class * 10,
        n_test=p.test_per_class * 10,
        table=table,
        verdicts=transfer_verdicts(records, run.costs),
        figures=[f.name for f in figs],
        acc=acc_text,
        se2=se2_text,
        spec=format,
        close=f"{CLOSE:.0f}",
        similar_cost=f"{SIMILAR_COST:.2f}",
    )
    return atomic_write(out / "RESULTS.md", text)
