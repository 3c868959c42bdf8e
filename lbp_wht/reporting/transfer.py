"""The EfficientNet-Lite0 transfer report (``scripts/reproduce_transfer.sh``,
``results/transfer/``), from the run of :func:`lbp_wht.integrations.transfer.run_transfer`.

* ``runs/<tag>_s<seed>.json``: one record per run (``lbp_wht.records`` format); ``cost.csv``:
  backprop MFLOPs, saved activations and trainable parameters per method; ``table.csv`` /
  ``table.md``: the table (accuracy mean ± sample std over seeds);
* ``figure.png/.pdf``: accuracy against backprop MFLOPs (LP_L1-r curves with BatchNorm on
  running statistics and in train mode, baselines as markers), ``figure_data.csv``;
* ``RESULTS.md`` (template ``transfer_results.md.j2``): protocol, machine, time, the table and
  the verdicts, computed from the numbers (:func:`verdicts`): the CPU demo's claims
  (:func:`lbp_wht.reporting.mini.claims`, read on the BatchNorm-eval rows) and the BatchNorm
  claim (:func:`bn_claim`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..records import write_record
from . import mini
from .render import render, write_rows_csv, write_text

__all__ = ["TransferStats", "bn_claim", "verdicts", "table_rows", "plot", "write_report"]


def _key(method: str, r: Any) -> tuple:
    r = None if r is None or (isinstance(r, float) and math.isnan(r)) else int(r)
    return (method, "lp_l1" if r else None, r)


class TransferStats(mini.Stats):
    """Accuracy and backprop MFLOPs per method key, for one BatchNorm mode (``norm_eval``)."""

    def __init__(self, records: Sequence[dict], costs: Sequence[dict], norm_eval: bool = True):
        self.records = [r for r in records if bool(r["norm_eval"]) == norm_eval]
        self.costs = {c["tag"]: c for c in costs}
        self.norm_eval = norm_eval

    def _rows(self, key: tuple) -> list[dict]:
        return [r for r in self.records if _key(r["method"], r.get("r")) == key]

    def acc(self, key: tuple) -> tuple[float | None, float | None, int]:
        vals = [float(r["accuracy"]) for r in self._rows(key)]
        if not vals:
            return None, None, 0
        s = pd.Series(vals)
        return float(s.mean()), (float(s.std(ddof=1)) if len(vals) > 1 else None), len(vals)

    def mflops(self, key: tuple) -> float | None:
        rows = self._rows(key)
        cost = self.costs.get(rows[0]["tag"]) if rows else None
        return float(cost["mflops"]) if cost else None


def bn_claim(records: Sequence[dict], rs: Sequence[int] = (2, 4)) -> dict[str, Any] | None:
    """ "BatchNorm in train mode hurts LBP-WHT, not exact backprop": per LP_L1-r (and Full BP)
    the accuracy with BatchNorm on running statistics minus that in train mode, with 2 SE.
    ``agrees`` when every LP_L1-r drops beyond noise and by more than Full BP; ``partly agrees``
    when some do; ``does NOT agree`` otherwise. None without the train-mode runs."""
    ev, tr = TransferStats(records, [], True), TransferStats(records, [], False)
    rows = []
    for key in [("full_bp", None, None), *[("lbp_wht", "lp_l1", r) for r in rs]]:
        a, b = ev.acc(key), tr.acc(key)
        if a[0] is None or b[0] is None:
            continue
        rows.append(dict(key=key, label=mini_label(key), eval=a, train=b, drop=a[0] - b[0],
                         noise=mini._noise(a, b)))  # fmt: skip
    full = next((r for r in rows if r["key"][0] == "full_bp"), None)
    lbp = [r for r in rows if r["key"][0] == "lbp_wht"]
    if not lbp:
        return None
    hurt = [
        r["label"]
        for r in lbp
        if r["drop"] > r["noise"] and (full is None or r["drop"] > full["drop"])
    ]
    verdict = "agrees" if len(hurt) == len(lbp) else ("partly agrees" if hurt else "does NOT agree")
    return dict(claim="bn_train", verdict=verdict, rows=rows, hurt=hurt, full=full)


def mini_label(key: tuple) -> str:
    from ..experiments.vocab import method_label

    return method_label(key)


def verdicts(records: Sequence[dict], costs: Sequence[dict]) -> list[dict[str, Any]]:
    """The demo's claims on the BatchNorm-eval rows, then the BatchNorm claim."""
    out = mini.claims(TransferStats(records, costs, True))
    bn = bn_claim(records)
    return out + ([bn] if bn else [])


def table_rows(records: Sequence[dict], costs: Sequence[dict], order: Sequence[str]) -> list[dict]:
    """One row per method tag (in ``order``): label, BatchNorm mode, R, MFLOPs, speedup,
    saved MB, trainable parameters, accuracy mean / std / n, mean train seconds."""
    from ..experiments.vocab import rank_of

    cost = {c["tag"]: c for c in costs}
    full = cost.get("full-bp", {}).get("mflops")
    out = []
    for tag in order:
        recs = [r for r in records if r["tag"] == tag]
        if not recs:
            continue
        r0, c = recs[0], cost.get(tag, {})
        acc = pd.Series([float(r["accuracy"]) for r in recs])
        rank = rank_of(_key(r0["method"], r0.get("r")))
        out.append(
            dict(
                tag=tag,
                method=r0["label"],
                bn="running stats" if r0["norm_eval"] else "train mode",
                R="-" if rank is None or r0["method"] == "full_bp" else rank,
                mflops=c.get("mflops"),
                speedup=(full / c["mflops"]) if full and c.get("mflops") else None,
                activation_mb=c.get("activation_mb"),
                trainable_params=c.get("trainable_params"),
                acc=float(acc.mean()),
                acc_std=float(acc.std(ddof=1)) if len(acc) > 1 else None,
                n=len(acc),
                train_s=float(pd.Series([r["train_s"] for r in recs]).mean()),
            )
        )
    return out


def _markdown(rows: Sequence[dict]) -> str:
    head = (
        "| Method | BatchNorm | R | Backprop MFLOPs | Speedup | Saved act. MB | Trainable "
        "params | Accuracy [%] | Train s / run |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        acc = f"{r['acc']:.2f}" + (f" ± {r['acc_std']:.2f}" if r["acc_std"] is not None else "")
        mf = "" if r["mflops"] is None else f"{r['mflops']:.2f}"
        sp = "" if r["speedup"] is None else f"{r['speedup']:.1f}×"
        mb = "" if r["activation_mb"] is None else f"{r['activation_mb']:.3f}"
        tp = "" if r["trainable_params"] is None else f"{r['trainable_params']:,}"
        lines.append(
            f"| {r['method']} | {r['bn']} | {r['R']} | {mf} | {sp} | {mb} | {tp} | {acc} (n={r['n']})"
            f" | {r['train_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict], out: Path) -> list[Path]:
    """Accuracy vs backprop MFLOPs: LP_L1-r per BatchNorm mode as curves, the rest as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 7, "legend.fontsize": 6})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(4.6, 3.4), layout="constrained")
    marks = {"Head only": ("D", "tab:gray"), "Full BP": ("*", "tab:red"),
             "LoRA-all": ("^", "tab:purple"), "LoSA": ("P", "tab:orange")}  # fmt: skip
    for bn, fill, ls in (("running stats", None, "-"), ("train mode", "none", "--")):
        d = df[df["bn"] == bn]
        lbp = d[d["tag"].str.startswith("lp-l1")].sort_values("mflops")
        if not lbp.empty:
            ax.errorbar(lbp["mflops"], lbp["acc"], yerr=lbp["acc_std"].astype(float).fillna(0),
                        color="tab:blue", ls=ls, marker="o", mfc=fill or "tab:blue", capsize=2,
                        lw=1, label=f"LBP-WHT LP_L1-r, BN {bn}")  # fmt: skip
            for _, p in lbp.iterrows():
                ax.annotate(p["method"].split("-")[-1].split(" ")[0], (p["mflops"], p["acc"]),
                            textcoords="offset points", xytext=(3, -8), fontsize=6)  # fmt: skip
        for name, (marker, color) in marks.items():
            b = d[d["method"].str.startswith(name)]
            if b.empty:
                continue
            ax.errorbar(b["mflops"], b["acc"], yerr=b["acc_std"].astype(float).fillna(0),
                        ls="none", marker=marker, color=color, mfc=fill or color, capsize=2,
                        ms=6 if marker == "*" else 4, label=f"{name}, BN {bn}")  # fmt: skip
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("Backprop computation per image [MFLOPs] (symlog)")
    ax.set_ylabel("Fashion-MNIST test accuracy [%]")
    ax.set_title("EfficientNet-Lite0 (ImageNet) 7x7 tail adapted to Fashion-MNIST")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    paths = [out / "figure.png", out / "figure.pdf"]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


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
    rows = table_rows(records, run.costs, [m.tag for m in run.methods])
    write_rows_csv(out / "table.csv", rows, float_format="{:.4f}")
    table = _markdown(rows)
    write_text(out / "table.md", "# EfficientNet-Lite0 -> Fashion-MNIST\n\n" + table + "\n")
    figs = plot(rows, out)
    write_rows_csv(out / "figure_data.csv", rows, ["tag", "bn", "mflops", "acc", "acc_std", "n"],
                   "{:.4f}")  # fmt: skip
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = {k: round(v) for k, v in run.stages.items()}
    total = total_s if total_s is not None else sum(run.stages.values())
    (out / "timing.json").write_text(json.dumps(dict(stages_s=stages, total_s=round(total),
                                                     command=command, date=date), indent=2) + "\n")  # fmt: skip
    try:
        load_end = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load_end = "n/a"
    p = run.protocol
    text = render(
        "transfer_results.md.j2",
        smoke=smoke,
        date=date,
        command=command,
        machine=mini.machine_description(),
        load_start=load_start,
        load_end=load_end,
        git=mini.git_revision(),
        total=mini.minutes(total),
        stages=list(stages.items()),
        jobs=run.jobs,
        protocol=p,
        seeds=run.seeds,
        n_train=p.train_per_class * 10,
        n_test=p.test_per_class * 10,
        table=table,
        verdicts=verdicts(records, run.costs),
        figures=[f.name for f in figs],
        acc=mini._fmt_acc,
        se2=mini._n,
        spec=format,
        close=f"{mini.CLOSE:.0f}",
        similar_cost=f"{mini.SIMILAR_COST:.2f}",
    )
    return write_text(out / "RESULTS.md", text)
