"""The gradient-fidelity report (``tools/analyze_gradients.py``, ``results/fidelity/``).

From the rows of :func:`lbp_wht.integrations.fidelity.analyze_config` (one per state,
selection and layer):

* ``fidelity.csv``: every row; ``summary.csv``: per state, selection and padding the mean over
  layers of each metric (cosine and relative error of ``g_w`` and ``g_x``, energy share);
* ``fidelity_layers.png/.pdf``: cosine of ``g_w`` (top) and ``g_x`` (bottom) against the number
  of bases R for LP_L1-r with reflect padding (the training setting), one line per layer type,
  one column per state; ``fidelity_selections.png/.pdf``: the layer mean of the ``g_w`` cosine
  against R for each selection and padding, one panel per state;
* ``README.md`` (template ``fidelity_readme.md.j2``): protocol, machine, date, command, the
  numbers, and the reading against the accuracy of the CPU demo's proxy Tables 2 and 4
  (:func:`accuracy_reading`: does the mean ``g_w`` cosine order the selections as their
  accuracy does?), with the verdict computed from the numbers.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..experiments.vocab import num_bases
from ..fidelity import FIELDS
from .render import render, write_text

__all__ = [
    "write_csvs",
    "summary",
    "plot_layers",
    "plot_selections",
    "accuracy_reading",
    "write_readme",
    "DEMO_SELECTIONS",
    "STRONG",
]

#: The demo's LBP-WHT rows (mini Tables 2 and 4) as (selection label, method key).
DEMO_SELECTIONS = (
    ("LP_L1-2", ("lbp_wht", "lp_l1", 2)),
    ("LP_L1-4", ("lbp_wht", "lp_l1", 4)),
    ("LP_L1-6", ("lbp_wht", "lp_l1", 6)),
    ("LP_L1-8", ("lbp_wht", "lp_l1", 8)),
    ("LP_Linf-3", ("lbp_wht", "lp_linf", 3)),
    ("LHE-10", ("lbp_wht", "lhe", 10)),
)
#: Spearman rank correlation from which fidelity "orders the selections as accuracy does".
STRONG = 0.8
METRICS = ("cos_gw", "relerr_gw", "cos_gx", "relerr_gx", "energy_share")


def write_csvs(rows: Sequence[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """``out/fidelity.csv`` (every row) and ``out/summary.csv`` (layer means)."""
    out.mkdir(parents=True, exist_ok=True)
    full = out / "fidelity.csv"
    cols = ["state", *FIELDS]
    with open(full, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    s = summary(pd.DataFrame(rows, columns=cols))
    path = out / "summary.csv"
    s.to_csv(path, index=False, float_format="%.6f")
    return full, path


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over layers per (state, selection, padding), with the number of layers."""
    keys = ["state", "selection", "family", "param", "num_bases", "padding"]
    g = df.groupby(keys, sort=False)
    s = g[list(METRICS)].mean().reset_index()
    s["layers"] = g.size().values
    return s


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 7, "axes.titlesize": 7, "legend.fontsize": 6})
    return plt


def plot_layers(df: pd.DataFrame, out: Path) -> list[Path]:
    """Cosine of g_w / g_x vs R, LP_L1-r (reflect), one line per layer type, a column per state."""
    plt = _plt()
    sel = df[(df["family"] == "lp_l1") & (df["padding"] == "reflect") & (df["num_bases"] < 64)]
    states = list(dict.fromkeys(df["state"]))
    fig, axes = plt.subplots(
        2, len(states), figsize=(max(2.8 * len(states) + 0.6, 5.0), 4.6), squeeze=False,
        sharey="row",
        layout="constrained",
    )  # fmt: skip
    for j, state in enumerate(states):
        d = sel[sel["state"] == state]
        for i, (metric, what) in enumerate((("cos_gw", "g_w"), ("cos_gx", "g_x"))):
            ax = axes[i][j]
            for kind, g in d.groupby("layer_type", sort=False):
                g = g.groupby("num_bases")[metric].mean()
                ax.plot(g.index, g.values, marker="o", ms=3, lw=1, label=kind)
            ax.set_title(f"{state}: cosine of {what} (LP_L1-r, reflect)")
            ax.set_xlabel("number of WHT bases R")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"cos(LBP-WHT {what}, exact {what})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    return _save(fig, out, "fidelity_layers")


def plot_selections(df: pd.DataFrame, out: Path) -> list[Path]:
    """Layer mean of the g_w cosine vs R per selection and padding, a panel per state."""
    plt = _plt()
    s = summary(df)
    s = s[s["num_bases"] < 64]
    states = list(dict.fromkeys(s["state"]))
    fig, axes = plt.subplots(
        1, len(states), figsize=(max(2.8 * len(states) + 0.6, 5.0), 3.0), squeeze=False,
        sharey=True,
        layout="constrained",
    )  # fmt: skip
    colors = {"lp_l1": "tab:blue", "lp_linf": "tab:green", "lhe": "tab:red"}
    names = {"lp_l1": "LP_L1", "lp_linf": "LP_Linf", "lhe": "LHE (this batch's best R)"}
    for ax, state in zip(axes[0], states):
        d = s[s["state"] == state]
        for (fam, pad), g in d.groupby(["family", "padding"], sort=False):
            g = g.sort_values("num_bases")
            ax.plot(
                g["num_bases"], g["cos_gw"], color=colors[fam], ls="-" if pad == "reflect" else "--",
                marker="o", ms=3, lw=1, label=f"{names[fam]}, {pad} padding",
            )  # fmt: skip
        ax.set_title(f"{state}: mean cosine of g_w over layers")
        ax.set_xlabel("number of WHT bases R")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cos(LBP-WHT g_w, exact g_w)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    return _save(fig, out, "fidelity_selections")


def accuracy_reading(df: pd.DataFrame, mini_dir: Path | None) -> dict[str, Any] | None:
    """Mean ``g_w`` cosine (reflect, the training setting) of the demo's LBP-WHT selections
    against their accuracy in the CPU demo (``mini_dir``: ``results/mini``), per state: the
    Spearman rank correlation over the selections, and the verdict ``agrees`` (every state at
    least :data:`STRONG`), ``partly`` (some state) or ``does NOT agree``. None without the
    demo's records."""
    if mini_dir is None or not (mini_dir / "runs" / "adapt").is_dir():
        return None
    from .mini import Stats

    stats = Stats(mini_dir / "runs" / "adapt", mini_dir / "cost")
    s = summary(df)
    s = s[s["padding"] == "reflect"]
    rows = []
    for label, key in DEMO_SELECTIONS:
        mean, std, n = stats.acc(key)
        if mean is None:
            continue
        row: dict[str, Any] = dict(selection=label, acc=mean, acc_std=std, n=n)
        for state in dict.fromkeys(s["state"]):
            hit = s[(s["state"] == state) & (s["selection"] == label)]
            row[state] = float(hit["cos_gw"].iloc[0]) if not hit.empty else math.nan
        rows.append(row)
    if len(rows) < 3:
        return None
    t = pd.DataFrame(rows)
    states = [c for c in t.columns if c not in ("selection", "acc", "acc_std", "n")]
    rho = {st: float(t["acc"].corr(t[st], method="spearman")) for st in states}
    strong = [st for st, r in rho.items() if r >= STRONG]
    verdict = (
        "agrees" if len(strong) == len(rho) else ("partly agrees" if strong else "does NOT agree")
    )
    return dict(rows=rows, states=states, rho=rho, verdict=verdict, strong=STRONG)


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
    s = summary(df)
    states = list(dict.fromkeys(s["state"]))

    def pick(label: str, pad: str, state: str) -> dict[str, float]:
        """The layer means of one selection (NaN, shown as n/a, where it was not run)."""
        hit = s[(s["selection"] == label) & (s["padding"] == pad) & (s["state"] == state)]
        return hit.iloc[0].to_dict() if not hit.empty else dict.fromkeys(METRICS, math.nan)

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
    return write_text(out / "README.md", text)
