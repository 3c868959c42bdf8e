"""Every figure: the paper's Figures 3, 4 and 5 from run records, cost records and a saved g_y
spectrum; the transfer run's accuracy vs cost; the gradient-fidelity curves.

* Figure 3: accuracy [%] vs backprop computation [MFLOPs] per model, partial training (last
  stage). LBP-WHT LP_L1-r for every r with records is one curve (points labelled with r, error
  bars = std over seeds); Full BP, LoRA and LoRA-all (and head only, where there are records)
  are single markers. Our points use our measured MFLOPs (``results/cost``); the paper's values
  (Table 2) are drawn dashed / hollow where the paper's table has both the accuracy and the
  MFLOPs.
* Figure 4: marginal accuracy, the slope of Figure 3's LBP-WHT curve between consecutive
  ranks, in accuracy percentage points per GFLOP of backprop.
* Figure 5: the 8x8 WHT energy spectrum of g_y (share of the total energy per base B_ij,
  log colour scale) of the layer saved in ``spectrum.json`` by ``LBPWHTHook`` (by default the
  last attention block of EfficientFormer-L1), with the LP_L1-4 selection outlined.
* :func:`plot_transfer` (``results/transfer/figure``), :func:`plot_fidelity_layers` and
  :func:`plot_fidelity_selections` (``results/fidelity/``).

Each figure is written as PNG (200 dpi) and PDF, sized for a paper column / page, plus a CSV of
the plotted numbers (:func:`make_figures`), every file aside and renamed
(:func:`lbp_wht.reporting.plotting.save_figure`). Missing data are left out of the plot (never
interpolated).
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..experiments.catalog import FIG5_CELL, Cell, read_paper_rows  # noqa: E402
from ..experiments.vocab import (  # noqa: E402
    BASE_LABELS,
    DATASETS,
    MODEL_NAMES,
    method_key,
    method_with,
    norm_dataset,
)
from ..io import atomic_write  # noqa: E402
from .plotting import save_figure  # noqa: E402
from .render import as_number  # noqa: E402
from .tables import cell_stat, cost_of, fidelity_summary, load_cost, load_runs  # noqa: E402

#: Methods drawn as single markers (label, marker, colour). ``head_only`` (the linear probe of
#: the CPU mini-reproduction; not in the paper) sits at the head's own, near-zero backprop cost;
#: ``losa`` (LoSA's side network, not in the paper) where there are records.
BASELINES = {
    m: (BASE_LABELS[m], marker, color)
    for m, marker, color in (
        ("head_only", "D", "tab:gray"),
        ("full_bp", "*", "tab:red"),
        ("lora", "s", "tab:green"),
        ("lora_all", "^", "tab:purple"),
        ("losa", "P", "tab:orange"),
    )
}
LBP_COLOR = "tab:blue"
#: The method whose LP_L1-r curve Figures 3 and 4 draw (LBP-WHT itself, not combined).
LBP = method_with(bases_only=True)


def _fig3_row(key: tuple) -> bool:
    """A Figure 3 point: a baseline drawn as a marker, or LP_L1-r of :data:`LBP`."""
    return key[0] in BASELINES or (key[0] == LBP and key[1] == "lp_l1")


#: The LBP-WHT selection as every figure writes it.
LP_L1 = "LP$_{L_1}$"
#: Smallest accuracy range [percentage points] a Figure 3 panel spans, so that two points 0.04
#: apart do not fill a panel as if they were far apart.
MIN_ACC_SPAN = 2.0


def _style() -> None:
    plt.rcParams.update(dict.fromkeys(("font.size", "axes.titlesize", "axes.labelsize"), 8))
    plt.rcParams.update(dict.fromkeys(("legend.fontsize", "xtick.labelsize", "ytick.labelsize"), 7))
    plt.rcParams["lines.markersize"] = 4


def _save(fig: plt.Figure, out: Path, name: str, dpi: int = 200) -> list[Path]:
    return save_figure(fig, [out / f"{name}.png", out / f"{name}.pdf"], dpi)


def _to_csv(df: pd.DataFrame, path: Path, **kw: Any) -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, **kw))


# ------------------------------------------------------------------------------ Figure 3/4
def fig3_models(paper_dir: Path) -> list[str]:
    """The models of Table 2's partial-training block, in the paper's order."""
    out: list[str] = []
    for row in read_paper_rows("2", paper_dir):
        if row["scope"] == "partial" and row["model"] not in out:
            out.append(row["model"])
    return out


def fig3_data(
    runs: pd.DataFrame,
    cost: pd.DataFrame,
    paper_dir: Path,
    models: Sequence[str],
    dataset: str = "cifar100",
    scope: str = "partial",
) -> pd.DataFrame:
    """One row per (model, source, method, r): mflops, acc, acc_std, n.

    ``source`` is ``ours`` (records + our cost; a point needs both) or ``paper`` (Table 2; a
    point needs both the paper's accuracy and MFLOPs).
    """
    rows: list[tuple] = []  # in the order of ``cols`` below
    for model in models:
        keys: set[tuple] = {(m, None, None) for m in BASELINES}
        if not runs.empty:
            sel = runs[
                (runs["model"] == model) & (runs["scope"] == scope) & (runs["dataset"] == dataset)
            ]
            for _, r in sel.iterrows():
                k = method_key(r["method"], r["select"], r["r"], r["r"])
                if _fig3_row(k):
                    keys.add(k)
        for key in keys:
            stat = cell_stat(runs, model, scope, key, dataset)
            mflops = cost_of(cost, model, scope, key)["mflops"]
            if stat.mean is not None and mflops is not None:
                rows.append((model, "ours", key[0], key[2], mflops, stat.mean, stat.std, stat.n))
        for p in read_paper_rows("2", paper_dir):
            if p["model"] != model or p["scope"] != scope:
                continue
            key = method_key(p["method"], p["select"], p["r"], p["rank"])
            if not _fig3_row(key):
                continue
            acc, mflops = as_number(p.get(dataset)), as_number(p.get("mflops"))
            if acc is not None and mflops is not None:
                rows.append((model, "paper", key[0], key[2], mflops, acc, None, None))
    cols = ["model", "source", "method", "r", "mflops", "acc", "acc_std", "n"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["model", "source", "method", "r"], na_position="first").reset_index(
        drop=True
    )


def marginal_data(fig3: pd.DataFrame) -> pd.DataFrame:
    """Slopes of the LBP-WHT curve between consecutive available ranks, per model and source:
    ``(acc_b - acc_a) / (mflops_b - mflops_a)`` in percentage points per GFLOP."""
    rows = []
    lbp = fig3[fig3["method"] == LBP]
    for (model, source), g in lbp.groupby(["model", "source"], sort=False):
        g = g.sort_values("r")
        pts = list(zip(g["r"], g["mflops"], g["acc"]))
        for (ra, fa, aa), (rb, fb, ab) in zip(pts, pts[1:]):
            if fb == fa:
                continue
            rows.append(
                dict(
                    model=model,
                    source=source,
                    r_from=int(ra),
                    r_to=int(rb),
                    r_mid=(ra + rb) / 2,
                    slope_pp_per_gflop=(ab - aa) / ((fb - fa) / 1000.0),
                )
            )
    cols = ["model", "source", "r_from", "r_to", "r_mid", "slope_pp_per_gflop"]
    return pd.DataFrame(rows, columns=cols)


def _points(
    ax: Any, pts: pd.DataFrame, source: str, label: str, color: Any, fill: str | None, **kw: Any
) -> None:
    """Figure 3's accuracy vs MFLOPs points of one method and source, with error bars (std over
    seeds) for ours; ``fill`` ``"none"``: hollow markers."""
    yerr = pts["acc_std"].astype(float).fillna(0.0) if source == "ours" else None
    ax.errorbar(pts["mflops"], pts["acc"], yerr=yerr, color=color, mfc=fill or color, capsize=2,
                label=f"{label} ({source})", **kw)  # fmt: skip


def plot_fig3(data: pd.DataFrame, models: Sequence[str], dataset: str, out: Path) -> list[Path]:
    """One panel per model (up to 3 per row). Constrained layout places the title, the shared
    y-label and the legend (below the panels) outside the axes; the figure is at least 4.2 in
    wide and the title and legend wrap to its width, so a single panel (the mini run) is not
    clipped."""
    _style()
    n = max(len(models), 1)
    ncols = min(3, n)
    nrows = int(np.ceil(n / ncols))
    width = max(2.4 * ncols, 4.2)
    has_paper = bool((data["source"] == "paper").any()) if not data.empty else False
    # Legend entries: LBP-WHT + every baseline drawn, per source present.
    n_entries = sum(
        1
        for src in ("paper", "ours")
        for m in (LBP, *BASELINES)
        if not data[(data["source"] == src) & (data["method"] == m)].empty
    )
    leg_cols = 4 if ncols > 1 else 2
    leg_rows = math.ceil(n_entries / leg_cols) if n_entries else 0
    title = "Figure 3: accuracy vs computation, training the last stage" + (
        " (solid: ours, dashed/hollow: paper)" if has_paper else ""
    )
    title = textwrap.fill(title, width=int(width * 15))  # ~15 characters per inch at 8 pt
    height = 2.0 * nrows + 0.25 + 0.15 * title.count("\n") + 0.17 * leg_rows
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained"
    )
    for ax, model in zip(axes.flat, models):
        d = data[data["model"] == model]
        for source, ls, fill in (("paper", "--", "none"), ("ours", "-", None)):
            s = d[d["source"] == source]
            lbp = s[s["method"] == LBP].sort_values("r")
            if not lbp.empty:
                label = f"LBP-WHT {LP_L1}-r"
                _points(ax, lbp, source, label, LBP_COLOR, fill, ls=ls, marker="o", lw=1)
                at = dict(textcoords="offset points", xytext=(3, -8), fontsize=6, color=LBP_COLOR)
                if source == "ours":  # r beside our points
                    for _, p in lbp.iterrows():
                        ax.annotate(f"{int(p['r'])}", (p["mflops"], p["acc"]), **at)
            for method, (label, marker, color) in BASELINES.items():
                b = s[s["method"] == method]
                if not b.empty:
                    ms = 6 if marker == "*" else 4
                    _points(ax, b, source, label, color, fill, ls="none", marker=marker, ms=ms)
        ax.set_title(MODEL_NAMES.get(model, model))
        ax.margins(x=0.06, y=0.1)  # room for the r labels below the lowest / last points
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))  # as Figure 4
        lo, hi = ax.get_ylim()
        if hi - lo < MIN_ACC_SPAN:
            mid = (lo + hi) / 2
            ax.set_ylim(mid - MIN_ACC_SPAN / 2, mid + MIN_ACC_SPAN / 2)
        ax.set_xlabel("Backprop computation [MFLOPs]")
        ax.grid(alpha=0.3)
        if d.empty:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles: dict[str, Any] = {}  # label -> its first handle, over every panel
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        legend = dict(loc="outside lower center", ncol=leg_cols, frameon=False)
        fig.legend(handles.values(), handles.keys(), **legend)
    fig.suptitle(title, fontsize=8)
    # Wrapped to the panels' height (~13 characters per inch), so that it cannot run into the
    # legend below a single row of panels.
    name = DATASETS[dataset].name if dataset in DATASETS else dataset
    ylabel = f"{name} top-1 accuracy [%]"
    fig.supylabel(textwrap.fill(ylabel, width=int(2.0 * nrows * 13)), fontsize=8)
    return _save(fig, out, "figure3")


def plot_fig4(marg: pd.DataFrame, models: Sequence[str], out: Path) -> list[Path]:
    """Each model's marginal accuracy as steps over the r it spans (a slope between r_a and
    r_b is drawn from r_a to r_b), integer r ticks, in Figure 3's fonts and notation."""
    _style()
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    present = [
        (m, src)
        for m in models
        for src in ("ours", "paper")
        if not marg[(marg["model"] == m) & (marg["source"] == src)].empty
    ]
    legend_rows = math.ceil(len(present) / 2)
    height = 2.6 + 0.17 * legend_rows
    fig, ax = plt.subplots(figsize=(4.6, height))
    for model, source in present:
        g = marg[(marg["model"] == model) & (marg["source"] == source)].sort_values("r_from")
        xs = [*g["r_from"], g["r_to"].iloc[-1]]
        ys = [*g["slope_pp_per_gflop"], g["slope_pp_per_gflop"].iloc[-1]]
        color, ours = colors[model], source == "ours"
        label = f"{MODEL_NAMES.get(model, model)} ({source})"
        ax.step(xs, ys, where="post", ls="-" if ours else "--", color=color, lw=1, label=label)
        mfc = color if ours else "none"
        ax.plot(g["r_mid"], g["slope_pp_per_gflop"], ls="none", marker="o", color=color, mfc=mfc)
    ax.axhline(0, color="k", lw=0.6)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))  # as Figure 3
    if present:
        r_lo, r_hi = int(marg["r_from"].min()), int(marg["r_to"].max())
        ax.set_xticks(range(r_lo, r_hi + 1))
        ax.set_xlim(r_lo - 0.3, r_hi + 0.3)
    ax.set_xlabel(f"{LP_L1}-r (each step spans the two r it compares)")
    ax.set_ylabel("Marginal accuracy [pp / GFLOP]")
    ax.set_title("Figure 4: marginal accuracy, the slope of Figure 3's LBP-WHT curve")
    ax.grid(alpha=0.3)
    if not present:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    else:  # legend below the axes, inside the figure (no bbox="tight": one draw per format)
        fig.legend(loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, (0.17 * legend_rows + 0.03) / height, 1, 1))
    return _save(fig, out, "figure4")


# --------------------------------------------------------------------------------- Figure 5
def find_spectrum(roots: Sequence[str | os.PathLike]) -> Path | None:
    """The Figure 5 run's ``spectrum.json`` (EfficientFormer-L1 partial on CIFAR-100, variant
    ``spectrum``, lowest seed) under ``roots``; else the first ``spectrum.json`` found; else
    None."""
    stem = Cell(**{**FIG5_CELL, "rank": None}).run_id(0)[: -len("0")]
    found: list[Path] = []
    for root in roots:
        if Path(root).exists():
            found += sorted(Path(root).rglob("spectrum.json"))
    preferred = [p for p in found if any(part.startswith(stem) for part in p.parts)]
    return (preferred or found or [None])[0]


def load_spectrum(path: str | os.PathLike) -> dict[str, Any]:
    """``spectrum.json`` -> dict with ``energy`` as an (n, n) float array (checked)."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable spectrum.json ({e})") from e
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: must hold a JSON object with an 'energy' array")
    energy = np.asarray(spec.get("energy"), dtype=float)
    if energy.ndim != 2 or energy.shape[0] != energy.shape[1]:
        raise ValueError(f"{path}: 'energy' must be a square (order, order) array")
    if not np.isfinite(energy).all() or (energy < 0).any() or energy.sum() <= 0:
        raise ValueError(f"{path}: 'energy' must be finite, non-negative and not all zero")
    spec["energy"] = energy
    return spec


def lp_l1_share(energy: np.ndarray, r: int) -> float:
    """Fraction of the g_y energy kept by the LP_L1-r bases (i + j < r)."""
    n = energy.shape[0]
    i, j = np.indices((n, n))
    return float(energy[(i + j) < r].sum() / energy.sum())


def plot_fig5(spec: dict[str, Any], out: Path, outline_r: int = 4) -> list[Path]:
    _style()
    energy = spec["energy"]
    share = 100.0 * energy / energy.sum()
    n = share.shape[0]
    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    positive = share[share > 0]
    vmin = max(positive.min(), share.max() * 1e-4) if positive.size else 1e-4
    norm = LogNorm(vmin=vmin, vmax=share.max())
    im = ax.imshow(np.clip(share, vmin, None), cmap="magma", norm=norm, origin="upper")
    # LP_L1-r outline: the staircase between cells with i + j < r and the rest.
    xs, ys = [-0.5], [min(outline_r, n) - 0.5]
    for j in range(min(outline_r, n)):
        i_max = min(outline_r - j, n)  # rows 0 .. i_max-1 are selected in column j
        xs += [j - 0.5, j + 0.5]
        ys += [i_max - 0.5, i_max - 0.5]
    xs += [min(outline_r, n) - 0.5]
    ys += [-0.5]
    ax.plot(xs, ys, color="cyan", lw=1.2, label=f"{LP_L1}-{outline_r}")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("WHT base index j (horizontal sequency)")
    ax.set_ylabel("WHT base index i (vertical sequency)")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("share of g_y energy [%] (log scale)")
    kept = ", ".join(f"{LP_L1}-{r}: {100 * lp_l1_share(energy, r):.1f}%" for r in (2, 4, 8))
    layer = spec.get("layer", "?")
    ax.set_title(
        f"Figure 5: WHT spectrum of g_y, {layer}\nenergy kept: {kept} "
        f"({spec.get('steps', '?')} steps)",
        fontsize=6,
    )
    ax.legend(loc="lower right", fontsize=6, framealpha=0.6)
    fig.tight_layout()
    return _save(fig, out, "figure5")


# ------------------------------------------------------------ transfer and gradient fidelity
def plot_transfer(rows: Sequence[dict], out: Path) -> list[Path]:
    """``results/transfer/figure.{png,pdf}``: accuracy vs backprop MFLOPs of the rows of
    :func:`lbp_wht.reporting.tables.transfer_rows`; LP_L1-r per BatchNorm mode as curves, the
    rest as markers."""
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
    return _save(fig, out, "figure")


def _fidelity_figure(nrows: int, states: Sequence[str], height: float, sharey: Any) -> tuple:
    """The gradient-fidelity figures' style, and ``(fig, axes)`` with a column per state."""
    plt.rcParams.update({"font.size": 7, "axes.titlesize": 7, "legend.fontsize": 6})
    width = max(2.8 * len(states) + 0.6, 5.0)
    return plt.subplots(nrows, len(states), figsize=(width, height), squeeze=False,
                        sharey=sharey, layout="constrained")  # fmt: skip


def _fidelity_save(fig: Any, axes: Any, ncol: int, out: Path, name: str) -> list[Path]:
    """The legend of the first panel below the panels, then :func:`_save`."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
    return _save(fig, out, name)


def plot_fidelity_layers(df: pd.DataFrame, out: Path) -> list[Path]:
    """``fidelity_layers.{png,pdf}``: cosine of g_w (top) / g_x (bottom) vs R, LP_L1-r with
    reflect padding, one line per layer type, a column per state (rows of
    :func:`lbp_wht.integrations.fidelity.analyze_config`)."""
    sel = df[(df["family"] == "lp_l1") & (df["padding"] == "reflect") & (df["num_bases"] < 64)]
    states = list(dict.fromkeys(df["state"]))
    fig, axes = _fidelity_figure(2, states, 4.6, sharey="row")
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
    return _fidelity_save(fig, axes, 3, out, "fidelity_layers")


def plot_fidelity_selections(df: pd.DataFrame, out: Path) -> list[Path]:
    """``fidelity_selections.{png,pdf}``: the layer mean of the g_w cosine vs R per selection
    and padding, a panel per state."""
    s = fidelity_summary(df)
    s = s[s["num_bases"] < 64]
    states = list(dict.fromkeys(s["state"]))
    fig, axes = _fidelity_figure(1, states, 3.0, sharey=True)
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
    return _fidelity_save(fig, axes, 2, out, "fidelity_selections")


# -------------------------------------------------------------------------------------- CLI
def make_figures(
    *,
    runs_roots: Sequence[str | os.PathLike],
    cost_dir: str | os.PathLike | None,
    paper_dir: str | os.PathLike,
    out: str | os.PathLike,
    figures: Sequence[str] = ("3", "4", "5"),
    models: Sequence[str] | None = None,
    dataset: str = "cifar100",
    spectrum: str | os.PathLike | None = None,
    where: Mapping[str, Any] | None = None,
) -> dict[str, list[Path]]:
    """Build the requested figures (from the records matching ``where``, as
    :func:`~lbp_wht.reporting.tables.load_runs`); returns ``{figure: [written paths]}``."""
    out, paper_dir = Path(out), Path(paper_dir)
    written: dict[str, list[Path]] = {}
    figures = [str(f).removeprefix("fig").removeprefix("ure") for f in figures]
    if {"3", "4"} & set(figures):
        runs = load_runs(runs_roots, where)
        cost = load_cost(cost_dir)
        models = list(models or fig3_models(paper_dir))
        ds = norm_dataset(dataset)
        data = fig3_data(runs, cost, paper_dir, models, ds)
        marg = marginal_data(data)
        out.mkdir(parents=True, exist_ok=True)
        if "3" in figures:
            written["3"] = plot_fig3(data, models, ds, out)
            written["3"].append(_to_csv(data, out / "figure3_data.csv", index=False))
        if "4" in figures:
            written["4"] = plot_fig4(marg, models, out)
            written["4"].append(_to_csv(marg, out / "figure4_data.csv", index=False))
    if "5" in figures:
        path = Path(spectrum) if spectrum else find_spectrum(runs_roots)
        if path is None:
            print(
                "figure 5: no spectrum.json under "
                f"{list(map(str, runs_roots))}; run the Figure 5 sweep "
                "(scripts/reproduce_figures.sh) or pass --spectrum PATH. Skipped.",
                file=sys.stderr,
            )
        else:
            spec = load_spectrum(path)
            written["5"] = plot_fig5(spec, out)
            energy = pd.DataFrame(
                spec["energy"],
                index=[f"i={i}" for i in range(spec["energy"].shape[0])],
                columns=[f"j={j}" for j in range(spec["energy"].shape[1])],
            )
            written["5"].append(_to_csv(energy, out / "figure5_data.csv"))
            print(f"figure 5: spectrum from {path}")
    return written
