"""``results/cost/``: the paper's cost columns (Tables 1, 2, 3, 5, 6, 7) measured, beside the
paper's.

For every row of the paper's cost tables (typed once in ``results/paper/*.csv``) the row's
experiment config (:func:`lbp_wht.experiments.catalog.resolve_config`) is measured by
:func:`lbp_wht.integrations.cost_record.analyze` (random init, batch 1, figures per image; one
JSON record per config in ``<out>/records/``, reused unless ``force``). :class:`CostTables`
writes

* ``table{2,3,5,6,7}.csv`` and ``.md``: our backprop MFLOPs and speedup next to the paper's,
  the ratio ours/paper, and a flag where the speedups differ by more than 10%;
* ``table1.csv`` / ``.md``: Table 1 from the analytic model (:mod:`lbp_wht.cost`) and from the
  counter on the single SwinV2-small layer (Cx=3072, Cy=768, L=49, R=8);
* ``run_info.json``: how (command, machine, date).

Configs of rows the paper does not print (e.g. LP_L1-6 in Table 2) are measured too and listed
with empty paper columns. Why ours differ from the paper's (the accounting hypotheses, every
printed cell's explanation, ``README.md``) is an analysis of these files:
``analysis/cost_agreement.py``, which measures its variants through :meth:`CostTables.record`.
:func:`measure_methods` measures a list of methods of one config (the CPU demo's cost table).
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import os.path as osp
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..experiments.catalog import Cell, resolve_config
from ..experiments.vocab import (
    METHOD_ORDER,
    MODEL_ORDER,
    PAPER_METHODS,
    lbp_options,
    method_key,
    method_label,
    method_spec,
    method_with,
    parse_config_name,
    parse_config_tag,
)
from ..io import atomic_write
from ..runs.records import read_record, write_record
from .paths import CONFIGS, COST, PAPER, REPO
from .render import (
    RecordValueError,
    as_number,
    checked_number,
    markdown_table,
    render,
    write_rows_csv,
)

#: Every table this module makes.
COST_TABLES = (1, 2, 3, 5, 6, 7)
#: Which dataset's config stands for each table (cost does not depend on the dataset except
#: for the number of classes of the head).
TABLE_DATASET = {2: "cifar100", 5: "cifar100", 6: "cifar100", 7: "places365", 3: "cityscapes"}
#: A speedup "differs" from the paper's when the ratio of the two is off 1 by more than this.
SPEEDUP_TOLERANCE = 0.10
#: The methods of the cost tables: the paper's (their configs are the LP_L1 ones; no
#: head-only rows).
COST_METHODS = PAPER_METHODS
#: The figures of a cost record that reach the tables (checked to be finite numbers).
RECORD_NUMBERS = """backprop_flops backward_flops forward_extra_flops linear_layers_counted
    other_counted linear_layers_analytic_gemm linear_layers_analytic_table1 lora_forward_extra
    backward_elementwise saved_activation_bytes saved_linear_input_bytes saved_weight_layer_bytes
    weight_grad_bytes trainable_params""".split()


def authors_options(method: str) -> dict[str, Any]:
    """``--cfg-options`` of the authors' variant of a row: the conversion their code executed
    (``lbp.variant='authors'``: SwinV2 qkv plain, Segformer's fitted layer set, LBP-WHT layers
    always computing ``g_x``) and, for LoRA-all, their freeze (``lbp.lora_train='scope'``: every
    non-LoRA parameter of the trained scope trains). Their plain-LoRA configs train the adapters
    and the head, our default; for LBP-WHT + LoRA-all their freeze is not documented and ours
    is kept."""
    return {"lbp.variant": "authors", **dict(method_spec(method).authors_options)}


#: The columns that name a row of a cost table.
ROW_FIELDS = ["table", "model", "scope", "method", "label", "r"]

#: Columns of ``table{2,3,5,7}.csv`` (Table 6 adds its memory columns).
CSV_FIELDS = (
    ROW_FIELDS
    + """rank ours_mflops ours_speedup paper_mflops paper_speedup
    paper_speedup_source ratio_mflops ratio_speedup speedup_differs authors_mflops authors_speedup
    authors_ratio_mflops authors_ratio_speedup authors_t1conv_mflops authors_elementwise_backward_m
    in_paper ours_t1conv_mflops ours_t1conv_speedup ours_backward_mflops ours_forward_extra_mflops
    ours_linear_layers_mflops ours_other_mflops analytic_table1_linear_mflops
    lora_forward_extra_mflops elementwise_backward_m saved_activation_mb saved_linear_input_mb
    weight_grad_mb trainable_params resolution config source_row""".split()
)
TABLE6_FIELDS = (
    CSV_FIELDS
    + """ours_gflops_batch64 paper_gflops ours_activation_mb_batch64
    ours_linear_input_mb_batch64 ours_weight_layer_input_mb_batch64 paper_activation_mb
    ours_weight_grad_mb ours_weight_grad_mb_x64 paper_gradient_mb cuda_peak_mb""".split()
)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV as strings (``[]`` when the file does not exist)."""
    if not osp.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rint(v: Any) -> int | None:
    x = as_number(v)
    return None if x is None else int(x)


def md_table(rows: Sequence[dict[str, Any]], cols: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: ``cols`` are ``(key, header, decimals)``; floats with thousands
    separators, booleans as **yes** / no, None as an empty cell."""
    cells = [[cell_text(r.get(k), nd) for k, _, nd in cols] for r in rows]
    return markdown_table([c[1] for c in cols], cells)


def _render(template: str, **context: Any) -> str:
    """A cost template with the number formats its tables and prose use."""
    return render(template, md_table=md_table, spec=format, **context)


def cell_text(v: Any, nd: int = 2) -> str:
    """A table cell: floats with ``nd`` decimals and thousands separators, booleans as
    **yes** / no, None and ``""`` empty."""
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return "**yes**" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def to_mflops(v: float) -> float:
    return round(v / 1e6, 2)


def row_label(method: str, r: Any) -> str:
    return method_label(method_key(method, "lp_l1", r))


def row_id(table: int, model: str, scope: str, method: str, r: int | None) -> dict[str, Any]:
    """The :data:`ROW_FIELDS` of a cost row (``label`` from the method and ``r``)."""
    return dict(zip(ROW_FIELDS, (table, model, scope, method, row_label(method, r), r)))


def _sort_key(row: dict[str, Any]) -> tuple:
    return (
        row.get("table", 0),
        {"partial": 0, "full": 1}.get(row.get("scope", ""), 2),
        MODEL_ORDER.index(row["model"]) if row["model"] in MODEL_ORDER else 99,
        METHOD_ORDER.index(row["method"]),
        row.get("r") or 0,
    )


def _options(cfg_options: Sequence[str]) -> dict[str, Any]:
    """``["lbp.r=7"]`` -> ``{"lbp.r": 7}`` (numbers as numbers)."""
    out: dict[str, Any] = {}
    for item in cfg_options:
        k, v = item.split("=", 1)
        out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


class CostTables:
    """Measures (or reuses) the cost record of every config a table needs and writes the
    tables of ``results/cost/``.

    Args:
        out: where the tables and ``run_info.json`` go.
        records: where the JSON cost records go (default ``<out>/records``); one per config
            and variant, reused unless ``force``.
        paper: the paper reference (``results/paper``).
        device, batch: of the measured training step (figures are per image).
        log: where progress lines go.
    """

    def __init__(
        self,
        out: str | os.PathLike = COST,
        *,
        records: str | os.PathLike | None = None,
        paper: str | os.PathLike = PAPER,
        force: bool = False,
        device: str = "cpu",
        batch: int = 1,
        log: Callable[[str], None] = print,
    ) -> None:
        self.out, self.paper = Path(out), Path(paper)
        self.records = Path(records) if records else self.out / "records"
        self.force, self.device, self.batch, self.log = force, device, batch, log
        self.cache: dict[str, dict[str, Any]] = {}
        #: Written into every record measured (what to run to measure it again).
        self.command = "python tools/make_cost_tables.py"

    # ------------------------------------------------------------------------------ records
    def find_config(
        self, table: int, model: str, scope: str, method: str, r: Any, dataset: str
    ) -> tuple[Path, dict[str, Any]]:
        """``(config path, cfg_options)`` for one paper row (the catalogue's resolver: the
        row's own generated config, else one of the same model / scope / dataset with the
        ``lbp`` block set as ``--cfg-options``)."""
        lbp = method_spec(method).has_bases
        cell = Cell(model, scope, method, "lp_l1" if lbp else None, rint(r), None, dataset)
        path, options = resolve_config(cell, table=str(table))
        return path, _options(options)

    def configs_for(self, table: int, model: str, scope: str, dataset: str) -> list[tuple]:
        """Method keys of the generated configs in ``configs/table{table}/`` for this model,
        scope and dataset (the methods of the cost tables only)."""
        keys = []
        pat = f"{model}_{scope}_*_{dataset}.py"
        for path in sorted(set((CONFIGS / f"table{table}").rglob(pat))):
            try:
                key = parse_config_tag(parse_config_name(path.name)[2])
            except ValueError:
                continue
            if key[0] in COST_METHODS and key[1] in (None, "lp_l1"):
                keys.append(key)
        return keys

    def record(
        self, found: tuple[Path, dict[str, Any]], tag: str = "", **analyze_kw: Any
    ) -> dict[str, Any]:
        """The cost record of ``found`` (config, options) and variant ``tag``: from the cache,
        else from ``<records>/<stem>.json`` (unless ``force``), else measured and written.

        Raises:
            RecordValueError: a figure of the record that reaches a table (:data:`RECORD_NUMBERS`)
                is missing or not a finite number (the message names the record file and the
                key).
        """
        config, options = found
        stem = Path(config).stem
        if options:
            stem += "__" + "_".join(f"{k}={v}" for k, v in sorted(options.items()))
        stem += f"__{tag}" if tag else ""
        if stem in self.cache:
            return self.cache[stem]
        path = self.records / f"{stem}.json"
        rec = None if self.force else read_record(path)
        if rec is None or rec.get("status") != "complete" or "saved_by_module_type" not in rec:
            from ..integrations.cost_record import analyze, load_config

            t0 = time.time()
            self.log(f"[cost] {osp.relpath(config, REPO)} {options or ''} {tag}")
            cfg = load_config(config, options or None)
            rec = analyze(cfg, batch=self.batch, device=self.device, **analyze_kw)
            rec["config"] = osp.relpath(config, REPO)
            rec["cfg_options"] = options
            rec["tag"] = tag
            rec["command"] = self.command
            write_record(path, rec)
            self.log(
                f"[cost]   backprop {rec['backprop_flops'] / 1e6:,.2f} MFLOPs/image "
                f"({time.time() - t0:.0f} s)"
            )
        for key in RECORD_NUMBERS:
            if checked_number(rec.get(key), path, key) is None:
                raise RecordValueError(f"{path}: {key} is missing")
        self.cache[stem] = rec
        return rec

    def authors_record(
        self, found: tuple[Path, dict[str, Any]], method: str, rec: dict[str, Any]
    ) -> dict[str, Any]:
        """The record of the authors' variant of ``found`` (:func:`authors_options`); Full BP
        converts nothing, so its record ``rec`` stands for both variants."""
        if not method_spec(method).converts:
            return rec
        config, options = found
        return self.record((config, {**options, **authors_options(method)}))

    def paper_rows(self, name: str, table: int | str | None = None) -> list[dict[str, str]]:
        """Rows of ``results/paper/<name>`` (of paper Table ``table`` only, if given)."""
        path = self.paper / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: it is the typed paper reference; restore it with "
                "`git checkout -- results/paper`"
            )
        rows = read_csv(path)
        return rows if table is None else [r for r in rows if r.get("table") == str(table)]

    # ------------------------------------------------------------------------ Tables 2-7
    def build_rows(self, table: int, paper_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
        """One output row per paper row of ``table`` (plus configs the paper has no row
        for)."""
        dataset = TABLE_DATASET[table]
        rows: list[dict[str, Any]] = []
        groups: dict[tuple[str, str], list[dict[str, str]]] = {}
        for pr in paper_rows:
            groups.setdefault((pr["model"], pr["scope"]), []).append(pr)
        for (model, scope), prs in groups.items():
            seen = set()
            ref = method_with(reference=True)
            full = self.record(self.find_config(table, model, scope, ref, None, dataset))
            paper_fulls = [
                as_number(p["mflops"]) for p in prs if method_spec(p["method"]).reference
            ]
            paper_full = next((v for v in paper_fulls if v), None)  # the first readable one
            items = [(p["method"], rint(p.get("r")), p) for p in prs]
            for method, _, r in self.configs_for(table, model, scope, dataset):
                if not any(m == method and rr == r for m, rr, _ in items):
                    items.append((method, r, None))
            for method, r, pr in items:
                if (method, r) in seen:
                    continue
                seen.add((method, r))
                found = self.find_config(table, model, scope, method, r, dataset)
                rec = self.record(found)
                authors = self.authors_record(found, method, rec)
                row = _cost_row(table, model, scope, method, r, pr, rec, full, paper_full)
                rows.append(dict(row, **_authors_columns(row, authors, full)))
        rows.sort(key=_sort_key)
        return rows

    def write_table(self, table: int, rows: list[dict[str, Any]]) -> None:
        write_rows_csv(self.out / f"table{table}.csv", rows, CSV_FIELDS)
        atomic_write(
            self.out / f"table{table}.md", _render("cost_table.md.j2", table=table, rows=rows)
        )

    # ---------------------------------------------------------------------------- Table 1
    def write_table1(self) -> dict[str, Any]:
        """Table 1 on the single SwinV2-small layer: ``table1.csv`` and ``table1.md``."""
        paper = {r["component"]: as_number(r["mflops"]) for r in self.paper_rows("table1.csv")}
        rows, extra = table1_rows(paper)
        write_rows_csv(self.out / "table1.csv", rows)
        atomic_write(self.out / "table1.md", _render("cost_table1.md.j2", rows=rows, x=extra))
        return extra

    # ---------------------------------------------------------------------------- Table 6
    def write_table6(self) -> list[dict[str, Any]]:
        """Table 6 (LBP-WHT + LoRA-all) with GFLOPs per batch of 64 and memory columns."""
        paper = self.paper_rows("table6.csv")
        # Table 6 gives GFLOPs per training batch of 64 (LoRA-all: 62 = 64 x Table 7's 976.50
        # MFLOPs); per image = GFLOPs * 1000 / 64, the unit of the other tables.
        for p in paper:
            g = as_number(p.get("gflops"))
            p["mflops"] = str(g * 1000 / 64) if g is not None else ""
            p.setdefault("speedup", "")
        rows = self.build_rows(6, paper)
        by_key = {(p["method"], rint(p.get("r"))): p for p in paper}
        out = []
        for r in rows:
            p = by_key.get((r["method"], r["r"]))
            rec = self.record(
                self.find_config(6, r["model"], r["scope"], r["method"], r["r"], TABLE_DATASET[6])
            )
            out.append(dict(r, **_table6_columns(rec, p)))
        write_rows_csv(self.out / "table6.csv", out, TABLE6_FIELDS)
        atomic_write(self.out / "table6.md", _render("cost_table6.md.j2", rows=out))
        return out

    def run(self, tables: Sequence[int] = COST_TABLES, *, command: str = "") -> dict[str, Any]:
        """Write ``tables``, then ``run_info.json``.

        A run of every table replaces ``run_info.json``; a partial run keeps the last full
        run's provenance there and adds itself under ``partial_runs`` (replacing an earlier
        partial run of the same tables), so the README still says how the files it did not
        regenerate were made. Returns this run's provenance.
        """
        import torch

        unknown = sorted(set(tables) - set(COST_TABLES))
        if unknown:
            raise ValueError(f"no cost table {unknown}; the cost tables are {list(COST_TABLES)}")
        t0 = time.time()
        self.records.mkdir(parents=True, exist_ok=True)
        for table in (1, 2, 5, 7, 6, 3):  # the order of the measurements in the log
            if table not in tables:
                continue
            if table == 1:
                self.write_table1()
            elif table == 6:
                self.write_table6()
            else:
                name = "segmentation.csv" if table == 3 else "classification.csv"
                self.write_table(table, self.build_rows(table, self.paper_rows(name, table)))
        meta = dict(
            command=command or "python tools/make_cost_tables.py ",
            host=platform.node(),
            machine=f"{platform.machine()} {platform.processor()}".strip(),
            python=platform.python_version(),
            torch=torch.__version__,
            device=self.device,
            date=_dt.datetime.now().isoformat(timespec="seconds"),
            seconds=round(time.time() - t0),
        )
        full = set(tables) == set(COST_TABLES)
        if not full:
            meta["tables"] = sorted(tables)
        write_record(self.out / "run_info.json", merge_run_info(self.run_info(), meta, full))
        return meta

    def run_info(self) -> dict[str, Any]:
        return read_record(self.out / "run_info.json") or {}


def merge_run_info(old: dict[str, Any], meta: dict[str, Any], full: bool) -> dict[str, Any]:
    """``run_info.json`` after a run: a full run's ``meta`` alone; a partial run's ``meta``
    under ``partial_runs`` of the old provenance (replacing an older partial run of the same
    tables), or on its own where there is no old provenance."""
    if full or not old:
        return meta
    partial = [p for p in old.get("partial_runs", []) if p.get("tables") != meta["tables"]]
    return dict(old, partial_runs=[*partial, meta])


# ------------------------------------------------------------------------------ the rows
def _t1_flops(rec: dict[str, Any]) -> float:
    """The record's backprop FLOPs with the LBP projections priced as in Table 1 (1 FLOP per
    element and basis, no bias row) instead of as the executed GEMMs."""
    gemm, table1 = rec["linear_layers_analytic_gemm"], rec["linear_layers_analytic_table1"]
    return rec["backprop_flops"] - gemm + table1


def _cost_row(
    table: int,
    model: str,
    scope: str,
    method: str,
    r: int | None,
    pr: dict[str, str] | None,
    rec: dict[str, Any],
    full: dict[str, Any],
    paper_full: float | None,
) -> dict[str, Any]:
    """One row of ``table{2,3,5,6,7}.csv``: our figures from ``rec`` (Full BP of the same
    model and scope: ``full``) beside the paper row ``pr`` (None: not in the paper)."""
    ours = rec["backprop_flops"] / 1e6
    opts = rec.get("cfg_options") or {}
    ours_sp = full["backprop_flops"] / rec["backprop_flops"]
    t1 = _t1_flops(rec)
    p_mf = as_number(pr["mflops"]) if pr else None
    p_sp = as_number(pr.get("speedup")) if pr else None
    p_sp_src = "paper" if p_sp is not None else ""
    if p_sp is None and p_mf and paper_full:
        p_sp, p_sp_src = paper_full / p_mf, "paper MFLOPs ratio"
    return dict(
        row_id(table, model, scope, method, r),
        rank=rec.get("rank"),
        ours_mflops=round(ours, 2),
        ours_speedup=round(ours_sp, 3),
        paper_mflops=p_mf,
        paper_speedup=round(p_sp, 3) if p_sp else None,
        paper_speedup_source=p_sp_src,
        ratio_mflops=round(ours / p_mf, 3) if p_mf else None,
        ratio_speedup=round(ours_sp / p_sp, 3) if p_sp else None,
        speedup_differs=(abs(ours_sp / p_sp - 1) > SPEEDUP_TOLERANCE) if p_sp else None,
        in_paper=pr is not None,
        ours_t1conv_mflops=round(t1 / 1e6, 2),
        ours_t1conv_speedup=round(full["backprop_flops"] / t1, 3),
        ours_backward_mflops=round(rec["backward_flops"] / 1e6, 2),
        ours_forward_extra_mflops=round(rec["forward_extra_flops"] / 1e6, 2),
        ours_linear_layers_mflops=round(rec["linear_layers_counted"] / 1e6, 2),
        ours_other_mflops=round(rec["other_counted"] / 1e6, 2),
        analytic_table1_linear_mflops=round(rec["linear_layers_analytic_table1"] / 1e6, 2),
        lora_forward_extra_mflops=round(rec["lora_forward_extra"] / 1e6, 2),
        elementwise_backward_m=round(rec["backward_elementwise"] / 1e6, 2),
        saved_activation_mb=round(rec["saved_activation_bytes"] / 1e6, 3),
        saved_linear_input_mb=round(rec["saved_linear_input_bytes"] / 1e6, 3),
        weight_grad_mb=round(rec["weight_grad_bytes"] / 1e6, 3),
        trainable_params=rec["trainable_params"],
        resolution=f"{rec['resolution'][0]}x{rec['resolution'][1]}",
        config=rec["config"] + "".join(f" --cfg-options {k}={v}" for k, v in sorted(opts.items())),
        source_row=pr.get("source_row") if pr else "",
    )


def _authors_columns(
    row: dict[str, Any], rec: dict[str, Any], full: dict[str, Any]
) -> dict[str, Any]:
    """The authors' variant of a cost row (``rec``; ``full``: Full BP, the same in both
    variants): MFLOPs, speedup and their ratios to the paper's."""
    mf = rec["backprop_flops"] / 1e6
    sp = full["backprop_flops"] / rec["backprop_flops"]
    p_mf, p_sp = row["paper_mflops"], row["paper_speedup"]
    return dict(
        authors_mflops=round(mf, 2),
        authors_speedup=round(sp, 3),
        authors_ratio_mflops=round(mf / p_mf, 3) if p_mf else None,
        authors_ratio_speedup=round(sp / p_sp, 3) if p_sp else None,
        authors_t1conv_mflops=round(_t1_flops(rec) / 1e6, 2),
        authors_elementwise_backward_m=round(rec["backward_elementwise"] / 1e6, 2),
    )


def _table6_columns(rec: dict[str, Any], p: dict[str, str] | None) -> dict[str, Any]:
    """Table 6's own columns: GFLOPs and memory per batch of 64, beside the paper's."""
    return dict(
        ours_gflops_batch64=round(rec["backprop_flops"] * 64 / 1e9, 2),
        paper_gflops=as_number(p["gflops"]) if p else None,
        ours_activation_mb_batch64=round(rec["saved_activation_bytes"] * 64 / 1e6, 1),
        ours_linear_input_mb_batch64=round(rec["saved_linear_input_bytes"] * 64 / 1e6, 1),
        ours_weight_layer_input_mb_batch64=round(rec["saved_weight_layer_bytes"] * 64 / 1e6, 1),
        paper_activation_mb=as_number(p["activation_mb"]) if p else None,
        ours_weight_grad_mb=round(rec["weight_grad_bytes"] / 1e6, 2),
        ours_weight_grad_mb_x64=round(rec["weight_grad_bytes"] * 64 / 1e6, 1),
        paper_gradient_mb=as_number(p["gradient_mb"]) if p else None,
        trainable_params=rec["trainable_params"],
        cuda_peak_mb=(
            round(rec["cuda_peak_bytes"] / 1e6, 1) if rec.get("cuda_peak_bytes") else None
        ),
    )


# ---------------------------------------------------------------------------- Table 1
#: Table 1's components: (label, key of ``lbp_wht.cost.table1``, the paper's formula).
TABLE1_COMPONENTS = (
    ("vanilla BP", "vanilla", "4 Cx Cy L"),
    ("projection p(x), p(g_y)", "projection", "(Cx + Cy) L R"),
    ("low-rank MM", "low_rank_mm", "4 Cx Cy R"),
    ("reverse projection", "reverse_projection", "Cx L R"),
    ("overhead (proj. + reverse)", "overhead", "(2 Cx + Cy) L R"),
    ("LBP-WHT total", "lbp_total", "sum"),
)


def table1_rows(paper: dict[str, float | None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table 1 example (SwinV2-small last linear layer) analytic and counted: one row per
    component, and the layer's facts (sizes, bases, totals, saved bytes)."""
    import torch
    import torch.nn as nn

    from .. import LBPConfig, LBPLinear, MapGeometry, cost, select_bases
    from ..measure import flop_counter, measure_step
    from ..projection import WHTProjector

    cx, cy, L, R = 3072, 768, 49, 8
    torch.manual_seed(0)
    # Any 8 bases cost the same; take the first 8 of LP_L1 in sequency order.
    bases = select_bases("lp_l1", radius=4)[:R]
    x = torch.randn(1, L, cx)
    plain = nn.Linear(cx, cy)
    x_req = x.clone().requires_grad_(True)
    m_plain = measure_step(plain, x_req, elementwise=False)
    cfg, geometry = LBPConfig(selection="explicit", bases=bases), MapGeometry(hw=(7, 7))
    m_lbp, m_lbp_nb = (  # the layer with and without bias, in this order (same random draws)
        measure_step(
            LBPLinear.from_module(nn.Linear(cx, cy, bias=bias), cfg, geometry=geometry),
            x_req,
            elementwise=False,
        )
        for bias in (True, False)
    )
    # Components, counted one by one on the projector the layer uses.
    proj = WHTProjector((7, 7), bases, 8, "reflect")
    g = torch.randn(1, L, cy)

    def count(fn) -> int:
        with flop_counter() as c:
            fn()
        return int(c.get_total_flops())

    proj.project(x)  # build the cached matrices outside the counter
    c_px = count(lambda: proj.project(x))
    c_pg = count(lambda: proj.project(g, grad=True))
    xh = proj.project(x).reshape(-1, cx)
    gh = proj.project(g, grad=True).reshape(-1, cy)
    w = plain.weight.detach()
    c_mm = count(lambda: (gh.t() @ xh, gh @ w))
    gxh = gh @ w
    c_rev = count(lambda: proj.project_back(gxh.view(1, -1, gxh.shape[-1])))
    t1 = cost.table1(cx, cy, L, R, convention="table1")
    tg = cost.table1(cx, cy, L, R, convention="gemm")
    counted = dict(
        vanilla=m_plain.backprop_flops,
        projection=c_px + c_pg,
        low_rank_mm=c_mm,
        reverse_projection=c_rev,
        overhead=c_px + c_pg + c_rev,
        lbp_total=m_lbp_nb.backprop_flops,
    )
    rows = []
    for label, key, formula in TABLE1_COMPONENTS:
        p = paper.get(key)
        rows.append(
            dict(
                component=label,
                formula=formula,
                analytic_table1_mflops=round(t1[key] / 1e6, 3),
                analytic_gemm_mflops=round(tg[key] / 1e6, 3),
                counted_mflops=round(counted[key] / 1e6, 3),
                paper_mflops=p,
                ratio_table1_to_paper=round(t1[key] / 1e6 / p, 4) if p else None,
            )
        )
    extra = dict(
        cx=cx,
        cy=cy,
        L=L,
        R=R,
        bases=bases,
        counted_lbp_with_bias=m_lbp.backprop_flops,
        counted_lbp_without_bias=m_lbp_nb.backprop_flops,
        counted_plain=m_plain.backprop_flops,
        speedup_table1=t1["speedup"],
        speedup_gemm=tg["speedup"],
        speedup_counted=m_plain.backprop_flops / m_lbp_nb.backprop_flops,
        saved_plain_bytes=m_plain.saved_activation_bytes,
        saved_lbp_bytes=m_lbp.saved_activation_bytes,
    )
    return rows, extra


# ------------------------------------------------------------------- methods of one config
def measure_methods(
    config: str | os.PathLike, out: Path, tags: Sequence[str], model: str, scope: str
) -> Path:
    """Backprop MFLOPs per training image of each method of ``tags`` (config tags such as
    ``lp-l1-r4``, :func:`lbp_wht.experiments.vocab.config_tag`) on ``config`` (batch 2, no
    elementwise estimate): ``out/records/<tag>.json`` and ``out/mini_cost.csv`` (the columns
    :func:`lbp_wht.reporting.tables.load_cost` reads, rows labelled ``model`` / ``scope``).
    Returns the CSV's path.

    Raises:
        ValueError: a tag that names no method.
    """
    import torch

    from ..integrations.cost_record import analyze, load_config

    keys = {tag: parse_config_tag(tag) for tag in tags}
    torch.set_num_threads(1)
    rows = []
    for tag, key in keys.items():
        opts = {f"lbp.{k}": v for k, v in lbp_options(key).items()}
        # analyze() feeds the model's own input channels (1: Fashion-MNIST).
        rec = analyze(load_config(config, opts), batch=2, elementwise=False)
        rec["tag"] = tag
        write_record(out / "records" / f"{tag}.json", rec)
        rows.append(
            dict(
                model=model,
                scope=scope,
                method=rec["method"],
                select=rec.get("select") or "",
                r=rec.get("r"),  # None: an empty cell
                rank=rec.get("rank"),
                mflops=rec["backprop_flops"] / 1e6,
                forward_mflops=rec["forward_nograd_flops"] / 1e6,
                trainable_params=rec["trainable_params"],
                tag=tag,
            )
        )
        print(f"cost {tag:10s} backprop {rows[-1]['mflops']:8.2f} MFLOPs / image", flush=True)
    full = next((r["mflops"] for r in rows if method_spec(r["method"]).reference), None)
    for r in rows:
        r["speedup"] = round(full / r["mflops"], 3) if full and r["mflops"] else ""
    return write_rows_csv(out / "mini_cost.csv", rows)
