"""The benchmark's report: LBP-WHT beside its successors, read from the files of one run of
``scripts/reproduce_benchmark.sh`` (an investigation, not part of the ``lbp_wht`` package).

Reads under ``--out`` (``results/benchmark``): ``mini/`` (the mini protocol: run records under
``runs/adapt``, cost records under ``cost/records``), ``cost.csv``, ``layers_cpu.csv``,
``step_cpu.csv``, ``fidelity.csv`` (``tools/benchmark_methods.py``), and the papers' own claims
(``results/paper/successors.csv``, where present). Writes ``table.csv``, ``table.md``, three
Pareto figures (accuracy vs backprop FLOPs, vs saved activation memory, vs step time) and
``README.md``, whose verdicts are computed here from those files (the rules are below, the
thresholds those of ``analysis/verdicts.py``).

    python analysis/benchmark_results.py --out results/benchmark [--command ...] [--smoke]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from report_common import git_revision, load_average, machine_description, render
from verdicts import CLOSE, FULL, Stats

from lbp_wht.experiments.methods import method_spec
from lbp_wht.experiments.vocab import method_label, method_sort_key
from lbp_wht.io import atomic_write
from lbp_wht.reporting.plotting import save_figure
from lbp_wht.runs.records import read_records

PAPER_CLAIMS = Path(__file__).resolve().parents[1] / "results" / "paper" / "successors.csv"
#: The per-layer shapes the table quotes (batch 64): ViT-B's MLP fc1 (class token) and
#: EfficientFormer-L1's Meta3D fc1 (Table 8's 7x7 map).
VIT_FC1 = (768, 3072, 197)
L1_FC1 = (448, 1792, 49)


def _missing(v: object) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _key(row: pd.Series | dict) -> tuple:
    """The method key of a record / CSV row (LHE rows by their number of bases, ``rank``)."""
    sel = None if _missing(row.get("select")) else row.get("select")
    r = row.get("rank") if sel == "lhe" else row.get("r")
    return (row["method"], sel, None if _missing(r) else int(r))


def _by_label(df: pd.DataFrame, value: str, **where: object) -> dict[str, float]:
    """``{row label: value}`` of the rows of ``df`` matching ``where``."""
    if df.empty:
        return {}
    sel = df
    for col, want in where.items():
        sel = sel[sel[col] == want]
    return {method_label(_key(r)): float(r[value]) for _, r in sel.iterrows()}


def load(out: Path) -> tuple[pd.DataFrame, dict]:
    """The benchmark table (one row per method label) and the raw frames behind it."""
    read = {n: out / f"{n}.csv" for n in ("cost", "layers_cpu", "step_cpu", "fidelity")}
    raw = {n: pd.read_csv(p) if p.exists() else pd.DataFrame() for n, p in read.items()}
    stats = Stats(out / "mini" / "runs" / "adapt", out / "mini" / "cost")
    saved = {}
    for rec in read_records(out / "mini" / "cost" / "records", "*.json", warn=False):
        saved[method_label(_key(rec))] = rec["saved_activation_bytes"] / 1024
    keys = {_key(r) for r in read_records(out / "mini" / "runs" / "adapt") if r.get("method")}
    keys |= {_key(r) for _, r in raw["cost"].iterrows()}
    cost, layers = raw["cost"], raw["layers_cpu"]
    l1p = _by_label(cost, "backprop_flops", model="efficientformer-l1", scope="partial")
    l1p_mem = _by_label(cost, "saved_activation_bytes", model="efficientformer-l1", scope="partial")
    l1f = _by_label(cost, "backprop_flops", model="efficientformer-l1", scope="full")
    vit = _by_label(cost, "backprop_flops", model="vit_base_patch16_224")
    vit_mem = _by_label(cost, "saved_activation_bytes", model="vit_base_patch16_224")
    step = {}
    if not raw["step_cpu"].empty:
        st = raw["step_cpu"]
        step = dict(zip(st["method"], st["speedup"]))  # its ``method`` is the row label
    lay = {}
    for shape, name in ((VIT_FC1, "vit"), (L1_FC1, "l1")):
        if layers.empty:
            continue
        sel = layers[
            (layers.cx == shape[0]) & (layers.cy == shape[1]) & (layers.tokens == shape[2])
        ]
        sel = sel[sel.batch == sel.batch.max()]
        lay[name] = dict(zip(sel["label"], sel["step_speedup"]))
        lay[name + "_bwd"] = dict(zip(sel["label"], sel["backward_speedup"]))
    transfer = {}
    tpath = out / "transfer" / "table.csv"
    if tpath.exists():
        t = pd.read_csv(tpath)
        t = t[t["bn"] == "running stats"]  # the protocol's setting (BatchNorm train mode aside)
        transfer = {r.method: (r.acc, r.acc_std, r.n) for r in t.itertuples()}
    fid = raw["fidelity"]
    cos_gw = fid.groupby("method")["cos_gw"].mean().to_dict() if not fid.empty else {}
    ref = method_label(FULL)

    def ratio(d: dict, label: str) -> float | None:
        return d[ref] / d[label] if label in d and ref in d and d[label] else None

    rows = []
    for key in sorted(keys, key=method_sort_key):  # noqa: B007
        label, spec = method_label(key), method_spec(key[0])
        mean, std, n = stats.acc(key)
        mflops = stats.mflops(key)
        rows.append(
            dict(
                method=label,
                source=spec.cite or ("LBP-WHT paper" if spec.paper else "ours"),
                successor=spec.successor,
                acc_mean=mean,
                acc_std=std,
                seeds=n,
                transfer_acc=transfer.get(label, (None,) * 3)[0],
                transfer_std=transfer.get(label, (None,) * 3)[1],
                transfer_seeds=transfer.get(label, (None,) * 3)[2],
                mini_mflops=mflops,
                mini_saved_kib=saved.get(label),
                l1_partial_flop_ratio=ratio(l1p, label),
                l1_partial_mem_ratio=ratio(l1p_mem, label),
                l1_full_flop_ratio=ratio(l1f, label),
                vitb_flop_ratio=ratio(vit, label),
                vitb_mem_ratio=ratio(vit_mem, label),
                l1_step_speedup=step.get(label),
                vitb_fc1_speedup=lay.get("vit", {}).get(label),
                l1_fc1_speedup=lay.get("l1", {}).get(label),
                cos_gw=cos_gw.get(label),
            )
        )
    return pd.DataFrame(rows), raw


def _fmt(v: object, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _acc(mean: object, std: object, n: object) -> str:
    """``mean ± std (n)``; ``-`` without runs."""
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.2f} ± {0 if std is None or pd.isna(std) else std:.2f} ({int(n)})"


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: accuracy mean ± std, ratios to Full BP as ``x``."""
    head = (
        "| method | source | mini accuracy % | transfer accuracy % | mini backprop MFLOPs "
        "| mini saved KiB "
        "| L1 partial FLOPs | L1 partial memory | L1 full FLOPs | ViT-B FLOPs | ViT-B memory "
        "| L1 step | ViT-B fc1 layer | L1 fc1 layer | cos g_w |"
    )
    lines = [head, "|" + " --- |" * 2 + " ---: |" * 13]
    for _, r in table.iterrows():
        cells = [
            r.method, r.source, _acc(r.acc_mean, r.acc_std, r.seeds),
            _acc(r.transfer_acc, r.transfer_std, r.transfer_seeds),
            _fmt(r.mini_mflops, ".1f"), _fmt(r.mini_saved_kib, ".0f"),
            *(_fmt(r[c], ".2f") + ("x" if not pd.isna(r[c]) else "") for c in (
                "l1_partial_flop_ratio", "l1_partial_mem_ratio", "l1_full_flop_ratio",
                "vitb_flop_ratio", "vitb_mem_ratio", "l1_step_speedup", "vitb_fc1_speedup",
                "l1_fc1_speedup")),
            _fmt(r.cos_gw, ".3f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def pareto(points: list[tuple[str, float, float]], lower_better: bool = True) -> list[str]:
    """Labels on the Pareto front of (label, cost, accuracy): no other point has both a lower
    (or equal) cost and a higher (or equal) accuracy, one of them strictly."""
    front = []
    for lab, c, a in points:
        dominated = any(
            (c2 <= c if lower_better else c2 >= c) and a2 >= a and (c2 != c or a2 != a)
            for _, c2, a2 in points
        )
        if not dominated:
            front.append(lab)
    return front


def figures(table: pd.DataFrame, out: Path) -> dict[str, list[str]]:
    """The three Pareto figures; returns each axis' front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = {
        "flops": ("mini_mflops", "backprop MFLOPs per image (mini model)", True),
        "memory": ("mini_saved_kib", "activation KiB saved for backward per image (mini)", True),
        "time": ("l1_step_speedup", "training-step speedup over Full BP (EfficientFormer-L1 "
                 "partial, CPU)", False),
    }  # fmt: skip
    fronts = {}
    for name, (col, xlabel, lower) in axes.items():
        t = table.dropna(subset=[col, "acc_mean"])
        pts = [(r.method, float(r[col]), float(r.acc_mean)) for _, r in t.iterrows()]
        fronts[name] = pareto(pts, lower)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for lab, c, a in pts:
            succ = bool(t[t.method == lab].successor.iloc[0])
            ax.scatter(
                c, a, marker="s" if succ else "o", color="C3" if lab in fronts[name] else "C0"
            )
            ax.annotate(lab, (c, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((p for p in pts if p[0] in fronts[name]), key=lambda p: p[1])
        ax.plot([p[1] for p in front], [p[2] for p in front], "C3--", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy % (mini protocol, mean over seeds)")
        ax.set_title(f"Accuracy vs {name}: Pareto front in red (squares: successors)")
        fig.tight_layout()
        save_figure(fig, [out / f"pareto_{name}.{ext}" for ext in ("png", "pdf")], dpi=130)
    return fronts


def verdicts(table: pd.DataFrame, fronts: dict[str, list[str]]) -> list[str]:
    """Which method when: the cheapest method on each axis among those within :data:`CLOSE`
    points of Full BP's accuracy, and the Pareto fronts."""
    out = []
    full = table[table.method == method_label(FULL)]
    if full.empty or pd.isna(full.acc_mean.iloc[0]):
        return ["No Full BP accuracy: no verdict."]
    bar = float(full.acc_mean.iloc[0]) - CLOSE
    ok = table[table.acc_mean >= bar]
    out.append(
        f"Within {CLOSE:.0f} point of Full BP ({full.acc_mean.iloc[0]:.2f}%): "
        + ", ".join(ok.method)
        + "."
    )
    for col, what, best, unit in (
        ("mini_mflops", "fewest backprop FLOPs", "min", " MFLOPs per image"),
        ("mini_saved_kib", "least activation memory saved for backward", "min", " KiB per image"),
        ("l1_step_speedup", "fastest training step (EfficientFormer-L1 partial, CPU)", "max",
         "x Full BP's speed"),
    ):  # fmt: skip
        cand = ok.dropna(subset=[col])
        if cand.empty:
            continue
        row = cand.loc[cand[col].idxmin() if best == "min" else cand[col].idxmax()]
        out.append(f"Among those, {what}: **{row.method}** ({row[col]:.3g}{unit}).")

    for name, front in fronts.items():
        out.append(f"Pareto front, accuracy vs {name}: {', '.join(front)}.")
    return out


#: Each claim quantity of ``successors.csv`` -> (table column, unit of the measured value,
#: what it is). ``saving`` turns a ratio into the percentage saved; ``acc_drop`` is Full BP's
#: accuracy minus the method's; ``vs_lora`` divides LoRA's saved bytes by the method's.
MEASURES: dict[str, tuple[str, str, str]] = {
    "memory_savings": ("saving", "%", "activation bytes saved for backward, ViT-B/16 last 4 "
                       "blocks, 1 - method / Full BP"),
    "speedup_on_real_gpus": ("vitb_fc1_speedup", "x", "ViT-B fc1 layer forward + backward, "
                             "batch 64, Full BP / method, on this CPU"),
    "compute_reduction": ("vitb_flop_ratio", "x", "backprop FLOPs, ViT-B/16 last 4 blocks, "
                          "Full BP / method"),
    "activation_memory_reduction": ("vitb_mem_ratio", "x", "activation bytes saved for "
                                    "backward, ViT-B/16 last 4 blocks, Full BP / method"),
    "peak_memory_reduction": ("vitb_mem_ratio", "x", "activation bytes saved for backward "
                              "(not the peak), ViT-B/16 last 4 blocks, Full BP / method"),
    "overall_memory_reduction": ("vs_lora", "x", "activation bytes saved for backward, "
                                 "ViT-B/16 last 4 blocks, LoRA-all / method"),
    "accuracy_tradeoff": ("acc_drop", "points", "mini protocol accuracy, Full BP - method"),
}  # fmt: skip


def claims(table: pd.DataFrame) -> list[dict]:
    """Each claim of ``results/paper/successors.csv`` beside the nearest measured quantity of
    this run (:data:`MEASURES`; None where the method did not run or nothing compares)."""
    if not PAPER_CLAIMS.exists():
        return []
    rows = []
    by = table.set_index("method")
    full = method_label(FULL)
    for _, c in pd.read_csv(PAPER_CLAIMS).iterrows():
        label = method_label((c["method"], None, None))
        col, unit, what = MEASURES.get(str(c["quantity"]), (None, "", "nothing comparable here"))
        measured = None
        num = lambda lab, c: pd.to_numeric(by.loc[lab, c]) if lab in by.index else math.nan  # noqa: E731
        if label in by.index and col is not None:
            if col == "saving":
                measured = 100 * (1 - 1 / num(label, "vitb_mem_ratio"))
            elif col == "acc_drop":
                measured = num(full, "acc_mean") - num(label, "acc_mean")
            elif col == "vs_lora":
                measured = num(label, "vitb_mem_ratio") / num("LoRA-all", "vitb_mem_ratio")
            else:
                measured = num(label, col)
        elif label not in by.index:
            what = "the method is not in this run"
        measured = None if measured is None or pd.isna(measured) else float(measured)
        rows.append(
            dict(c) | dict(label=label, measured=measured, measured_unit=unit, measured_what=what)
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/benchmark"))
    p.add_argument("--command", default="scripts/reproduce_benchmark.sh")
    p.add_argument("--stages", nargs="*", default=[], help="NAME=seconds of each stage")
    p.add_argument("--load-start", default="n/a")
    p.add_argument("--smoke", action="store_true")
    p.add_argument(
        "--rerender",
        action="store_true",
        help="rebuild table, figures and README from the files of an earlier run, keeping its "
        "command, stages, date, machine and load (OUT/timing.json)",
    )
    args = p.parse_args(argv)
    table, raw = load(args.out)
    atomic_write(args.out / "table.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(args.out / "table.md", markdown(table))
    fronts = figures(table, args.out)
    timing = args.out / "timing.json"
    if args.rerender:
        run = json.loads(timing.read_text())
        run["git"] = f"{run['git']} (report re-rendered at {git_revision()})"
    else:
        run = dict(
            command=args.command,
            stages=dict(s.split("=", 1) for s in args.stages),
            date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine_description(),
            load_start=args.load_start,
            load_end=load_average(),
            git=git_revision(),
            smoke=args.smoke,
        )
        atomic_write(timing, json.dumps(run, indent=2) + "\n")
    runs = {}
    root = f"{Path(__file__).resolve().parents[1]}/"
    for name in ("cost", "layers_cpu", "step_cpu", "fidelity"):
        f = args.out / f"{name}.run.json"
        runs[name] = json.loads(f.read_text()) if f.exists() else None
        if runs[name]:  # paths relative to the checkout
            runs[name]["command"] = runs[name]["command"].replace(root, "")
    loads = []
    for frame, cols in ((raw["layers_cpu"], ("load",)),
                        (raw["step_cpu"], ("loadavg_1m_start", "loadavg_1m_end"))):  # fmt: skip
        for c in cols:
            if c in frame:
                loads += [float(v) for v in frame[c].dropna()]
    text = render(
        "benchmark_readme.md.j2",
        **run,
        runs=runs,
        timed_load=(min(loads), max(loads)) if loads else None,
        table=markdown(table),
        verdicts=verdicts(table, fronts),
        claims=claims(table),
        close=CLOSE,
        fmt=_fmt,
    )
    atomic_write(args.out / "README.md", text)
    print(f"wrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
