"""``results/latency/``: the benchmark rows of :mod:`lbp_wht.benchmark` as CSV, Markdown and
figures, and the same Markdown and figures again from the CSVs alone.

Each output ``<stem>`` (``table8_<device>``, ``ablation_cpu``, ``projection_cpu``,
``e2e_backward_cpu``, ``step_<device>``) is written as ``<stem>.csv`` (floats to
:data:`FLOAT_FORMAT`), ``<stem>.md`` (a template under ``templates/``, filled from the rows as
the CSV holds them) and, for Table 8 and the end-to-end benchmark, ``<stem>.png`` / ``.pdf``.
The facts about the run that the rows do not hold (command, torch version, threads, machine)
go to ``<stem>.run.json`` beside them, so :func:`rerender` rebuilds the same Markdown and
figures from the committed files without timing anything again. (The CSVs committed up to
2026-12-07 hold 4 significant digits: rebuilt from them, a cell may differ from the committed
Markdown in its last digit, e.g. ``12.680`` where the run printed ``12.677``.)
"""

from __future__ import annotations

import functools
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..experiments.vocab import method_key, method_label, method_with
from ..io import atomic_write
from .plotting import label_log_axis, pyplot, save_figure
from .render import parse_rows_csv, read_rows_csv, render, rows_csv_text

#: The ``method`` of the exact-backprop rows and of the LBP-WHT rows (the experiment ids of
#: the two methods; ``gemm`` rows are the paper's baseline of two bare GEMMs).
FULL, LBP = method_with(reference=True), method_with(bases_only=True)

#: The CSV columns of a Table 8 benchmark run, in order.
TABLE8_COLUMNS = """device threads model cx cy L prefix batch method variant select r R latency_us
    latency_q1_us latency_q3_us speedup speedup_q1 speedup_q3 cpu_latency_us speedup_cputime
    speedup_cputime_q1 speedup_cputime_q3 latency_min_us speedup_min speedup_vs_gemm
    naive_latency_us speedup_straightforward speedup_straightforward_cputime xproj_us
    speedup_incl_xproj paper_speedup_cpu paper_speedup_gpu paper_latency_cpu_us flop_bound
    pct_of_bound pct_of_bound_cputime flop_bound_source roofline_bound pct_of_roofline stream_us
    allocator rounds loadavg_1m_start loadavg_1m_end torch date""".split()
#: Floats in the CSVs: 6 significant digits, more than any table prints (the Markdown and the
#: figures are made from the CSV's values, so that a rerender writes the same bytes).
FLOAT_FORMAT = "{:.6g}"


def run_meta(command: str) -> dict[str, Any]:
    """The facts of this process the reports print beside the rows: ``command`` (the tool and
    its arguments, without ``python``), torch version, intra-op threads, processor, architecture
    and logical CPU count."""
    import torch

    here = os.getcwd() + os.sep  # paths below the working directory relative (portable_path)
    meta = dict(
        command=command.replace(here, ""),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.processor() or platform.machine(),
        arch=platform.machine(),
        logical_cpus=os.cpu_count(),
        cpu_model=cpu_model(),
    )
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
        meta["cuda"] = torch.version.cuda
    return meta


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), ``""`` where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def read_meta(stem: str | os.PathLike) -> dict[str, Any]:
    """``<stem>.run.json``.

    Raises:
        FileNotFoundError: it is missing (the rows alone do not say how they were made).
        ValueError: it is not a JSON object.
    """
    path = Path(str(stem) + ".run.json")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: it holds the command and machine of {Path(stem).name}.csv; "
            "re-run the benchmark, or write it with the keys command, torch, threads, machine, "
            "arch, logical_cpus"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    return meta


# ---------------------------------------------------------------------------------- Table 8
def _label(row: dict[str, Any]) -> str:
    label = method_label(method_key(row["method"], row.get("select") or None, row.get("r")))
    variant = row.get("variant") or "eager"
    return label if variant == "eager" else f"{label} ({variant})"


def _x(row: dict[str, Any], key: str, digits: int = 2) -> str:
    """``row[key]`` as ``1.23x``, ``-`` where the run has no such value."""
    v = row.get(key)
    return f"{v:.{digits}f}x" if isinstance(v, int | float) else "-"


def _table8_cells(r: dict[str, Any]) -> list[str]:
    shape = f"({r['cx']}, {r['cy']}, {r['L']})"
    lat = f"{r['latency_us']:.0f} [{r['latency_q1_us']:.0f}, {r['latency_q3_us']:.0f}]"
    load = f"{r['loadavg_1m_start']:.1f}"
    if r["method"] == FULL:
        variant = r.get("variant") or "eager"
        name = "Full BP" if variant == "eager" else f"Full BP ({variant})"
        return [shape, name, "-", lat, "1.00", "1.00", "1.00", *["-"] * 8, load]
    pap = r.get("paper_speedup_gpu") or r.get("paper_speedup_cpu")
    return [
        shape,
        _label(r),
        str(r["R"]),
        lat,
        f"**{r['speedup']:.2f}x** [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]",
        _x(r, "speedup_cputime"),
        _x(r, "speedup_min"),
        _x(r, "speedup_vs_gemm"),
        _x(r, "speedup_incl_xproj"),
        _x(r, "speedup_straightforward"),
        f"{pap:.1f}x" if pap else "-",
        f"{r['flop_bound']:.2f}x",
        f"{r['pct_of_bound']:.0f}%",
        f"{r['roofline_bound']:.2f}x",
        f"{r['pct_of_roofline']:.0f}%",
        load,
    ]


def table8_markdown(rows: Sequence[dict[str, Any]], device: str, meta: dict[str, Any]) -> str:
    """The Markdown of a Table 8 benchmark run (one table per batch; the bare-GEMM rows are in
    the CSV only)."""
    by_batch = {b: [r for r in rows if r["batch"] == b] for b in sorted({r["batch"] for r in rows})}
    runs = meta.get("batch_runs") or {}
    table8 = all(r["L"] == 49 for r in rows)  # the paper's shapes: one 7x7 map
    load_min, load_max = _load_range(rows)
    return render(
        "latency_table8.md.j2",
        title="Table 8 latency" if table8 else "Per-layer latency on multi-patch maps",
        device=device,
        meta=meta,
        runs={b: runs.get(str(b)) for b in by_batch},
        dates={b: g[0]["date"] for b, g in by_batch.items()},
        loads={b: _load_range(g) for b, g in by_batch.items()},
        paper_device="GPU" if str(device).startswith("cuda") else "CPU",
        date=rows[0]["date"],
        threads=rows[0]["threads"] or "-",
        load_min=load_min,
        load_max=load_max,
        allocator=rows[0]["allocator"],
        batches=[
            (b, [_table8_cells(r) for r in g if r["method"] != "gemm"]) for b, g in by_batch.items()
        ],
    )


def _load_range(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The lowest 1-min load average at the start and the highest at the end of ``rows``."""
    start, end = min(r["loadavg_1m_start"] for r in rows), max(r["loadavg_1m_end"] for r in rows)
    return f"{start:.2f}", f"{end:.2f}"


def plot_table8(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """Grouped bars per Table 8 row: our speedup per batch (and per backward variant where a
    batch was run in several), the paper's CPU speedup, the bound."""
    plt = pyplot()
    lbp = [r for r in rows if r["method"] == LBP]
    keys = list(dict.fromkeys((r["cx"], r["cy"], r["r"]) for r in lbp))
    batches = sorted({r["batch"] for r in lbp})
    get = {(r["cx"], r["cy"], r["r"], r["batch"], r.get("variant") or "eager"): r for r in lbp}
    series = []
    for b in batches:
        variants = list(dict.fromkeys(k[4] for k in get if k[3] == b))
        for v in variants:
            label = f"ours, batch {b}" + ("" if len(variants) == 1 else f", {v}")
            series.append((label, [get[k + (b, v)]["speedup"] if k + (b, v) in get else 0.0
                                   for k in keys]))  # fmt: skip
    b0 = batches[0]
    first = {k[:3]: r for k, r in reversed(get.items()) if k[3] == b0}
    paper = [first[k].get("paper_speedup_cpu") or 0.0 for k in keys]
    series.append(("paper (Jetson Nano CPU, batch 1)", paper))
    series.append(("FLOP bound (Table 1)", [first[k]["flop_bound"] for k in keys]))
    fig, ax = plt.subplots(figsize=(12, 4.6))
    width = 0.8 / len(series)
    colors = ["tab:blue", "tab:cyan", "tab:purple", "tab:pink", "tab:olive", "tab:brown"]
    colors = colors[: len(series) - 2] + ["tab:orange", "tab:green"]
    for i, (label, vals) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, vals, width, label=label, color=colors[i % len(colors)])
    ticks = [f"({cx},{cy})\n" + method_label((LBP, "lp_l1", r)) for cx, cy, r in keys]
    ax.set_xticks(range(len(keys)), ticks, fontsize=7)
    ax.set_ylabel("backprop speedup vs Full BP (log scale)")
    ax.set_yscale("log")
    # Labelled ticks at 1, 2, 5, 10, 20 (not only the decades) and the legend below the axes,
    # where it covers no bar.
    top = max(v for _, vals in series for v in vals if v)
    lo, hi = 0.8, top * 1.15
    ax.set_ylim(lo, hi)
    label_log_axis(ax.yaxis, lo, hi, suffix="x")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_title(
        f"Table 8 shapes (L=49): LBP-WHT backward speedup, {rows[0]['device']}, "
        f"{rows[0]['threads']} thread(s)"
    )
    ax.legend(fontsize=8, ncol=min(len(series), 4), loc="upper center",
              bbox_to_anchor=(0.5, -0.16), frameon=False)  # fmt: skip
    fig.tight_layout()
    return _save(fig, stem)


def write_table8(
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    device: str,
    meta: dict[str, Any],
    *,
    name: str = "table8",
    merge: bool = False,
) -> list[Path]:
    """``<name>_<device>.{csv,md,png,pdf,run.json}`` under ``out_dir``; returns the paths.

    With ``merge``, the rows of the batches measured here replace those batches' rows of the
    existing files, and the other batches' rows stay; ``run.json`` then records, per batch,
    the command, processor and torch version that measured it (``batch_runs``), which the
    Markdown prints under each batch heading.
    """
    stem = Path(out_dir) / f"{name}_{device.split(':')[0]}"
    if merge and stem.with_suffix(".csv").exists():
        rows, meta = _merged(stem, rows, meta)
    markdown = functools.partial(_table8_markdown_of, device=device)
    return _write(stem, rows, meta, markdown, plot_table8, TABLE8_COLUMNS)


def _merged(
    stem: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    old_rows, old_meta = _read_rows(stem.with_suffix(".csv")), read_meta(stem)
    new_batches = {int(r["batch"]) for r in rows}
    kept = [r for r in old_rows if int(r["batch"]) not in new_batches]

    def run_of(m: dict[str, Any]) -> dict[str, Any]:
        keys = ("command", "cpu_model", "machine", "torch", "threads")
        return {k: m[k] for k in keys if k in m}

    runs = dict(old_meta.get("batch_runs") or {})
    for b in {int(r["batch"]) for r in kept}:
        runs.setdefault(str(b), run_of(old_meta))
    for b in new_batches:
        runs[str(b)] = run_of(meta)
    merged = sorted([*kept, *rows], key=lambda r: int(r["batch"]))
    return merged, dict(meta, batch_runs=dict(sorted(runs.items(), key=lambda kv: int(kv[0]))))


# ------------------------------------------------------------------- ablation and projection
def ablation_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        [
            r["batch"],
            r["change"],
            r["layout"],
            f"{r['before_us']:.0f} [{r['before_min_us']:.0f}]",
            f"{r['after_us']:.0f} [{r['after_min_us']:.0f}]",
            f"{r['ratio_median']:.2f}x",
            f"{r['loadavg_1m']:.1f}",
        ]
        for r in rows
    ]
    return render("latency_ablation.md.j2", meta=meta, lines=lines)


def projection_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    def cell(r: dict[str, Any], k: str) -> str:
        if r.get(k + "_us") in ("", None):
            return "-"
        return f"{r[k + '_us']:.0f} ({r[k + '_cpu_us']:.0f})"

    def faster(r: dict[str, Any]) -> str:
        both = {k: r[f"{k}_proj_us"] + r[f"{k}_rev_us"] for k in ("dense", "patch")}
        return min(both, key=both.__getitem__)

    def model(r: dict[str, Any]) -> str:
        if r.get("model_dense") in ("", None):
            return "-"
        return f"{r['model_dense']:.0f} / {r['model_patch']:.0f}"

    impls = ("dense_proj", "patch_proj", "legacy_proj", "fwht_proj", "dense_rev", "patch_rev")
    lines = [
        [r["hw"], r["patches"], r["R"], *(cell(r, k) for k in impls), faster(r), model(r)]
        + [r["auto_impl"], f"{r['loadavg_1m']:.1f}"]
        for r in rows
    ]
    return render(
        "latency_projection.md.j2",
        meta=meta,
        batch=rows[0]["batch"],
        channels=rows[0]["channels"],
        lines=lines,
    )


def write_component_table(
    kind: str, rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, meta: dict[str, Any]
) -> list[Path]:
    """``<kind>_cpu.{csv,md,run.json}`` for ``kind`` ``"ablation"`` or ``"projection"``."""
    markdown = {"ablation": ablation_markdown, "projection": projection_markdown}[kind]
    return _write(Path(out_dir) / f"{kind}_cpu", rows, meta, markdown)


# -------------------------------------------------------------------------------- end to end
def e2e_timm_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown of :func:`lbp_wht.benchmark.e2e.run_e2e_timm` rows (one model)."""
    r0 = rows[0]
    lines = [
        [
            r["method"],
            f"{int(r['lbp_layers'])} / {int(r['linear_layers'])}",
            f"{r['backward_ms']:.0f} [{r['backward_q1_ms']:.0f}, {r['backward_q3_ms']:.0f}]",
            f"**{r['speedup']:.2f}x** [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]",
            f"{r['speedup_cputime']:.2f}x",
            f"{r['backprop_gflops']:.1f}",
            f"{r['flop_speedup']:.2f}x",
            f"{100 * r['linear_share']:.0f}%",
            f"{100 * r['outside_share']:.0f}%",
            f"{r['saved_activation_mb']:.0f}",
        ]
        for r in rows
    ]
    return render("latency_e2e_timm.md.j2", meta=meta, lines=lines, **_run_fields(r0))


def e2e_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    r0 = rows[0]
    lines = [
        [
            r["method"],
            f"{r['backward_ms']:.1f} [{r['backward_q1_ms']:.1f}, {r['backward_q3_ms']:.1f}]",
            f"{r['speedup']:.2f}x [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]",
            f"{r['speedup_cputime']:.2f}x",
            f"{r['backprop_gflops']:.3f}",
            f"{r['flop_speedup']:.2f}x",
            f"{r['trainable_params']:,}",
        ]
        for r in rows
    ]
    return render("latency_e2e.md.j2", meta=meta, lines=lines, **_run_fields(r0))


def _run_fields(r0: dict[str, Any]) -> dict[str, Any]:
    """The run's fields the end-to-end and step templates print (from its first row)."""
    keys = ("model", "date", "threads", "batch", "size", "rounds", "allocator")
    return dict(
        {k: r0[k] for k in keys},
        load0=f"{r0['loadavg_1m_start']:.2f}",
        load1=f"{r0['loadavg_1m_end']:.2f}",
    )


def plot_e2e(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """Backward time per method, and measured vs FLOP speedup."""
    plt = pyplot()
    r0 = rows[0]
    labels = [r["method"] for r in rows]
    med = [r["backward_ms"] for r in rows]
    err = [
        [r["backward_ms"] - r["backward_q1_ms"] for r in rows],
        [r["backward_q3_ms"] - r["backward_ms"] for r in rows],
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.bar(labels, med, yerr=err, capsize=3, color=["0.5", "tab:orange"] + ["tab:blue"] * 3)
    ax1.set_ylabel("backward time per step [ms]")
    ax1.set_title(f"{r0['model']}, partial training, batch {r0['batch']}, CPU {r0['threads']} thr")
    for i, v in enumerate(med):
        ax1.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    xs = range(len(rows))
    w = 0.38
    meas = [r["speedup"] for r in rows]
    flop = [r["flop_speedup"] for r in rows]
    ax2.bar([i - w / 2 for i in xs], meas, w, label="measured (wall time)", color="tab:blue")
    ax2.bar([i + w / 2 for i in xs], flop, w, label="FLOP ratio (FlopCounterMode)", color="0.7")
    ax2.axhline(1.0, color="k", lw=0.6)
    ax2.set_xticks(list(xs), labels)
    ax2.set_ylabel("speedup vs Full BP")
    ax2.set_title("backward speedup: measured vs FLOPs")
    ax2.legend(fontsize=8)
    for i, (a, b) in enumerate(zip(meas, flop)):
        ax2.text(i - w / 2, a, f"{a:.1f}", ha="center", va="bottom", fontsize=7)
        ax2.text(i + w / 2, b, f"{b:.1f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    return _save(fig, stem)


def write_e2e(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, meta: dict[str, Any]
) -> list[Path]:
    """``e2e_backward_cpu.{csv,md,png,pdf,run.json}`` under ``out_dir``."""
    stem = Path(out_dir) / "e2e_backward_cpu"
    return _write(stem, rows, meta, e2e_markdown, plot_e2e)


def write_e2e_timm(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, meta: dict[str, Any]
) -> list[Path]:
    """``e2e_timm_<model>_cpu.{csv,md,run.json}`` under ``out_dir``."""
    stem = Path(out_dir) / f"e2e_timm_{rows[0]['model']}_cpu"
    return _write(stem, rows, meta, e2e_timm_markdown)


# ----------------------------------------------------------------------------- training step
def _step_cells(r: dict[str, Any], cuda: bool) -> list[str]:
    cells = [
        r["method"],
        f"{r['step_ms']:.1f} [{r['step_q1_ms']:.1f}, {r['step_q3_ms']:.1f}]",
        f"{r['forward_ms']:.1f}",
        f"{r['backward_ms']:.1f}",
        f"{r['optimizer_ms']:.1f}",
        f"**{r['speedup']:.2f}x** [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]",
        f"{r['backward_speedup']:.2f}x",
        f"{r['step_gflops']:.2f}",
        f"{r['flop_bound']:.2f}x",
        f"{r['pct_of_bound']:.0f}%",
        f"{r['saved_activation_mb']:.1f}",
    ]
    if cuda:
        cells.append(f"{r['cuda_peak_mb']:.0f}" if r.get("cuda_peak_mb") not in ("", None) else "-")
    return cells + [f"{int(r['trainable_params']):,}"]


def step_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown of a training-step benchmark run (one table per scope)."""
    r0 = rows[0]
    cuda = str(r0["device"]).startswith("cuda")
    scopes = list(dict.fromkeys(r["scope"] for r in rows))
    run = _run_fields(r0) | {k: r0[k] or "-" for k in ("threads", "allocator")}
    return render(
        "latency_step.md.j2",
        meta=meta,
        **run,
        **{k: r0[k] for k in ("device", "amp", "optimizer")},
        cuda=cuda,
        scopes=[(s, [_step_cells(r, cuda) for r in rows if r["scope"] == s]) for s in scopes],
    )


def plot_step(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """Per scope: stacked phase times per method, and measured step speedup vs FLOP bound."""
    plt = pyplot()
    scopes = list(dict.fromkeys(r["scope"] for r in rows))
    fig, axes = plt.subplots(len(scopes), 2, figsize=(10, 3.6 * len(scopes)), squeeze=False)
    r0 = rows[0]
    for (ax1, ax2), scope in zip(axes, scopes):
        sub = [r for r in rows if r["scope"] == scope]
        labels = [r["method"] for r in sub]
        bottom = [0.0] * len(sub)
        for phase, color in (
            ("forward", "0.6"),
            ("backward", "tab:blue"),
            ("optimizer", "tab:orange"),
        ):
            vals = [r[f"{phase}_ms"] for r in sub]
            ax1.bar(labels, vals, bottom=bottom, label=phase, color=color)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax1.set_ylabel("time per step [ms]")
        ax1.set_title(f"{r0['model']}, {scope} training, batch {r0['batch']}, {r0['device']}")
        ax1.legend(fontsize=8)
        xs = range(len(sub))
        w = 0.38
        ax2.bar([i - w / 2 for i in xs], [r["speedup"] for r in sub], w, label="measured step")
        ax2.bar([i + w / 2 for i in xs], [r["flop_bound"] for r in sub], w, color="0.7",
                label="FLOP bound (fwd + bwd)")  # fmt: skip
        ax2.axhline(1.0, color="k", lw=0.6)
        ax2.set_xticks(list(xs), labels)
        ax2.set_ylabel("step speedup vs Full BP")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, stem)


def write_step(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, meta: dict[str, Any]
) -> list[Path]:
    """``step_<device>.{csv,md,png,pdf,run.json}`` under ``out_dir``."""
    stem = Path(out_dir) / f"step_{str(rows[0]['device']).split(':')[0]}"
    return _write(stem, rows, meta, step_markdown, plot_step)


# ----------------------------------------------------------------------------------- shared
def _write(
    stem: Path,
    rows: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    markdown: Callable[[Sequence[dict[str, Any]], dict[str, Any]], str],
    plot: Callable[[Sequence[dict[str, Any]], Path], list[Path]] | None = None,
    fields: Sequence[str] | None = None,
) -> list[Path]:
    """``<stem>.csv`` (floats to :data:`FLOAT_FORMAT`), ``.md`` (``markdown(rows, meta)``), the
    figure (``plot``) and ``.run.json``; returns the paths in that order. The Markdown and the
    figure are made from the rows as the CSV holds them, so that :func:`rerender` rebuilds the
    same files; the Markdown is made before anything is written."""
    text = rows_csv_text(rows, fields, FLOAT_FORMAT)
    stored = parse_rows_csv(text)
    md = markdown(stored, meta)
    paths = [
        atomic_write(stem.with_suffix(".csv"), text),
        atomic_write(stem.with_suffix(".md"), md),
    ]
    paths += plot(stored, stem) if plot else []
    run = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    return paths + [atomic_write(stem.with_name(stem.name + ".run.json"), run)]


def _save(fig: Any, stem: Path) -> list[Path]:
    return save_figure(fig, [stem.with_suffix(".png"), stem.with_suffix(".pdf")], dpi=150)


def _table8_again(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    return table8_markdown(rows, str(rows[0]["device"]), meta)


def _table8_markdown_of(rows: Sequence[dict[str, Any]], meta: dict[str, Any], device: str) -> str:
    return table8_markdown(rows, device, meta)


#: What :func:`rerender` rebuilds, in order: (CSV file pattern, Markdown, figure or None).
RERENDER = (
    ("table8_*.csv", _table8_again, plot_table8),
    ("fusion_*.csv", _table8_again, plot_table8),
    ("multipatch_*.csv", _table8_again, plot_table8),
    ("ablation_cpu.csv", ablation_markdown, None),
    ("projection_cpu.csv", projection_markdown, None),
    ("e2e_backward_cpu.csv", e2e_markdown, plot_e2e),
    ("step_*.csv", step_markdown, plot_step),
    ("e2e_timm_*_cpu.csv", e2e_timm_markdown, None),
)


def rerender(out_dir: str | os.PathLike) -> list[Path]:
    """Rebuild every Markdown file and figure under ``out_dir`` from its CSV and
    ``.run.json`` (nothing is timed); returns the paths written.

    Raises:
        FileNotFoundError: ``out_dir`` holds no benchmark CSV, or a CSV's ``.run.json`` is
            missing.
    """
    out = Path(out_dir)
    found = [(p, md, plot) for pat, md, plot in RERENDER for p in sorted(out.glob(pat))]
    if not found:
        names = ", ".join(pat for pat, _, _ in RERENDER)
        raise FileNotFoundError(f"no benchmark CSV ({names}) in {out}")
    written: list[Path] = []
    for csv_path, markdown, plot in found:
        stem = csv_path.with_suffix("")
        meta, rows = read_meta(stem), _read_rows(csv_path)
        written.append(atomic_write(stem.with_suffix(".md"), markdown(rows, meta)))
        written += plot(rows, stem) if plot else []
    return written


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = read_rows_csv(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows
