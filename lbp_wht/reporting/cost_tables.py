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
* ``hypotheses*.csv``: the accounting hypotheses tested against the paper's numbers (what makes
  ours differ);
* ``README.md`` (template ``cost_readme.md.j2``): how the files were made (command, machine,
  date, from ``run_info.json``) and the findings, every number read from the files above.

Configs of rows the paper does not print (e.g. LP_L1-6 in Table 2) are measured too and listed
with empty paper columns.
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
    MODELS,
    method_key,
    method_label,
    parse_config_name,
    parse_config_tag,
)
from ..records import read_record, write_record
from .paths import CONFIGS, COST, PAPER, REPO
from .render import as_number, render, write_rows_csv, write_text

#: Every table this module makes.
COST_TABLES = (1, 2, 3, 5, 6, 7)
#: Which dataset's config stands for each table (cost does not depend on the dataset except
#: for the number of classes of the head).
TABLE_DATASET = {2: "cifar100", 5: "cifar100", 6: "cifar100", 7: "places365", 3: "cityscapes"}
#: A speedup "differs" from the paper's when the ratio of the two is off 1 by more than this.
SPEEDUP_TOLERANCE = 0.10
#: The methods of the cost tables (their configs are the LP_L1 ones; no head-only rows).
COST_METHODS = ("full_bp", "lora", "lora_all", "lbp_wht", "lbp_wht+lora_all")
#: The paper's LoRA-all freeze in its partial-training configs (``lora_layer4``): the whole last
#: stage and the head train beside the adapters.
AUTHORS_FREEZE_LORA_ALL = ["backbone.network.3.*", "head.*"]
#: The two variants every cost row is measured in: ours (the corrected conversion, the
#: default) and the authors' (what the authors' code executed).
VARIANT_NAMES = ("corrected", "authors")


def authors_options(method: str) -> dict[str, Any]:
    """``--cfg-options`` of the authors' variant of a row: the conversion their code executed
    (``lbp.variant='authors'``: SwinV2 qkv plain, Segformer's fitted layer set, LBP-WHT layers
    always computing ``g_x``) and, for LoRA-all, their freeze (``lbp.lora_train='scope'``: every
    non-LoRA parameter of the trained scope trains). Their plain-LoRA configs train the adapters
    and the head, our default; for LBP-WHT + LoRA-all their freeze is not documented and ours
    is kept."""
    opts: dict[str, Any] = {"lbp.variant": "authors"}
    if method == "lora_all":
        opts["lbp.lora_train"] = "scope"
    return opts


#: The accounting hypotheses tested on Table 7 (``hypotheses.csv``).
HYPOTHESES = {
    "H0": "ours: backward + forward-for-backward, matmul/conv FLOPs only",
    "H1": "H0 + elementwise estimate (perf counts every FP instruction)",
    "H2": "H0 with projections counted as in Table 1 (1 FLOP per element and basis)",
    "H3": "H0 + g_x at the stage input (every layer with trainable weights back-propagates "
    "to its input, incl. the frozen-input 3x3 downsampling conv)",
    "H4": "H0, LoRA-all with the authors' freeze (all non-LoRA params of network.3 train, "
    "as in their lora_layer4 configs)",
    "H5": "H3 and H4 together",
    "H6": "H0 + forward of the trained stage and head (fwd+bwd of the trained part)",
    "H7": "H0 x 64 (per batch of 64 instead of per image)",
}

#: The columns that name a row of a cost table.
ROW_FIELDS = ["table", "model", "scope", "method", "label", "r"]
#: Columns of ``hypotheses_efficientformerv2.csv``: MFLOPs per hypothesis, its ratio to the
#: paper's MFLOPs, its speedup and that speedup's ratio to the paper's.
HYPOTHESES_V2_FIELDS = [
    *ROW_FIELDS,
    "paper_mflops",
    "paper_speedup",
    *(
        f"{k}{suffix}"
        for k in ("corrected", "authors", "V2-DS", "V2-FFN")
        for suffix in ("", "_ratio", "_speedup", "_speedup_ratio")
    ),
]

#: Columns of ``hypotheses_segmentation.csv`` (MFLOPs and their ratio to the paper's).
HYPOTHESES_SEG_FIELDS = [
    "scope",
    "method",
    "label",
    "r",
    "paper_mflops",
    *(
        f"{prefix}{k}"
        for k in (
            "512x512",
            "256x512",
            "authors_512x512",
            "authors_half",
            "authors_256x512",
            "authors_scope_half",
            "authors_decoder_half",
        )
        for prefix in ("" if k.startswith("authors") else "ours_", "ratio_")
    ),
    "paper_speedup",
    "ours_speedup_512x512",
    "ours_speedup_256x512",
]

#: Columns of ``table{2,3,5,7}.csv`` (Table 6 adds its memory columns).
CSV_FIELDS = [
    *ROW_FIELDS,
    "rank",
    "ours_mflops",
    "ours_speedup",
    "paper_mflops",
    "paper_speedup",
    "paper_speedup_source",
    "ratio_mflops",
    "ratio_speedup",
    "speedup_differs",
    "authors_mflops",
    "authors_speedup",
    "authors_ratio_mflops",
    "authors_ratio_speedup",
    "authors_t1conv_mflops",
    "authors_elementwise_backward_m",
    "in_paper",
    "ours_t1conv_mflops",
    "ours_t1conv_speedup",
    "ours_backward_mflops",
    "ours_forward_extra_mflops",
    "ours_linear_layers_mflops",
    "ours_other_mflops",
    "analytic_table1_linear_mflops",
    "lora_forward_extra_mflops",
    "elementwise_backward_m",
    "saved_activation_mb",
    "saved_linear_input_mb",
    "weight_grad_mb",
    "trainable_params",
    "resolution",
    "config",
    "source_row",
]
TABLE6_FIELDS = CSV_FIELDS + [
    "ours_gflops_batch64",
    "paper_gflops",
    "ours_activation_mb_batch64",
    "ours_linear_input_mb_batch64",
    "ours_weight_layer_input_mb_batch64",
    "paper_activation_mb",
    "ours_weight_grad_mb",
    "ours_weight_grad_mb_x64",
    "paper_gradient_mb",
    "cuda_peak_mb",
]


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
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "| " + " | ".join("---" for _ in cols) + " |"
    body = ["| " + " | ".join(_fmt(r.get(k), nd) for k, _, nd in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _render(template: str, **context: Any) -> str:
    """A cost template with the number formats its tables and prose use."""
    return render(template, md_table=md_table, fmt=_fmt, f=_f, spec=format, **context)


def _f(v: Any, nd: int = 2) -> str:
    """A number in prose: ``1,234.57``; ``n/a`` where there is none."""
    x = as_number(v)
    return "n/a" if x is None else f"{x:,.{nd}f}"


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return "**yes**" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def typed(row: dict[str, Any]) -> dict[str, Any]:
    """CSV strings back to numbers / booleans for display (``r``, ``rank``, ``table`` stay
    as written)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v in ("True", "False"):
            out[k] = v == "True"
        elif isinstance(v, str) and k not in ("r", "rank", "table") and as_number(v) is not None:
            out[k] = float(v)
        else:
            out[k] = v
    return out


def find_row(rows: Sequence[dict[str, str]], **match: Any) -> dict[str, str] | None:
    """The first row whose fields equal ``match`` (compared as text)."""
    for r in rows:
        if all(str(r.get(k, "")) == str(v) for k, v in match.items()):
            return r
    return None


def _mf(v: float) -> float:
    return round(v / 1e6, 2)


def _label(method: str, r: Any) -> str:
    return method_label(method_key(method, "lp_l1", r))


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
        out: where the tables, ``README.md`` and ``run_info.json`` go.
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

    # ------------------------------------------------------------------------------ records
    def find_config(
        self, table: int, model: str, scope: str, method: str, r: Any, dataset: str
    ) -> tuple[Path, dict[str, Any]]:
        """``(config path, cfg_options)`` for one paper row (the catalogue's resolver: the
        row's own generated config, else one of the same model / scope / dataset with the
        ``lbp`` block set as ``--cfg-options``)."""
        lbp = method.startswith("lbp_wht")
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
        else from ``<records>/<stem>.json`` (unless ``force``), else measured and written."""
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
            rec["command"] = "python tools/make_cost_tables.py"
            write_record(path, rec)
            self.log(
                f"[cost]   backprop {rec['backprop_flops'] / 1e6:,.2f} MFLOPs/image "
                f"({time.time() - t0:.0f} s)"
            )
        self.cache[stem] = rec
        return rec

    def authors_record(
        self, found: tuple[Path, dict[str, Any]], method: str, rec: dict[str, Any]
    ) -> dict[str, Any]:
        """The record of the authors' variant of ``found`` (:func:`authors_options`); Full BP
        converts nothing, so its record ``rec`` stands for both variants."""
        if method == "full_bp":
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
            full = self.record(self.find_config(table, model, scope, "full_bp", None, dataset))
            paper_full = next(
                (
                    as_number(p["mflops"])
                    for p in prs
                    if p["method"] == "full_bp" and as_number(p["mflops"])
                ),
                None,
            )
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
        write_text(
            self.out / f"table{table}.md", _render("cost_table.md.j2", table=table, rows=rows)
        )

    # ---------------------------------------------------------------------------- Table 1
    def write_table1(self) -> dict[str, Any]:
        """Table 1 on the single SwinV2-small layer: ``table1.csv`` and ``table1.md``."""
        paper = {r["component"]: as_number(r["mflops"]) for r in self.paper_rows("table1.csv")}
        rows, extra = table1_rows(paper)
        write_rows_csv(self.out / "table1.csv", rows)
        write_text(self.out / "table1.md", _render("cost_table1.md.j2", rows=rows, x=extra))
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
        write_text(self.out / "table6.md", _render("cost_table6.md.j2", rows=out))
        return out

    # ------------------------------------------------------------------------- hypotheses
    def hypotheses(self) -> None:
        """Accounting hypotheses (why ours differ from the paper's), written to
        ``hypotheses.csv`` / ``hypotheses_summary.csv`` (Table 7, every hypothesis),
        ``hypotheses_full_bp.csv`` (H3 on every model's partial Full BP),
        ``hypotheses_lora_all.csv`` (H4 on every LoRA-all row of Tables 2 and 5) and
        ``hypotheses_segmentation.csv`` (Table 3 at half the crop)."""
        rows, summary = self._hypotheses_table7()
        write_rows_csv(self.out / "hypotheses.csv", rows)
        write_rows_csv(self.out / "hypotheses_summary.csv", summary)
        write_rows_csv(self.out / "hypotheses_full_bp.csv", self._hypothesis_stage_input())
        write_rows_csv(self.out / "hypotheses_lora_all.csv", self._hypothesis_lora_all())
        write_rows_csv(
            self.out / "hypotheses_segmentation.csv",
            self._hypothesis_half_crop(),
            HYPOTHESES_SEG_FIELDS,
        )
        write_rows_csv(
            self.out / "hypotheses_efficientformerv2.csv",
            self._hypothesis_efficientformerv2(),
            HYPOTHESES_V2_FIELDS,
        )

    def _hypotheses_table7(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every hypothesis row by row against Table 7's MFLOPs and speedups
        (EfficientFormer-L1 partial training, the only table whose every cost cell is
        readable for one model)."""
        out = []
        for pr in self.paper_rows("classification.csv", 7):
            method, r = pr["method"], rint(pr.get("r"))
            cfg = self.find_config(7, pr["model"], pr["scope"], method, r, "places365")
            base = self.record(cfg)
            ig = self.record(cfg, tag="input-grad", input_grad=True)
            if method == "lora_all":
                af = self.record(cfg, tag="authors-freeze", trainable=AUTHORS_FREEZE_LORA_ALL)
                afig = self.record(
                    cfg,
                    tag="authors-freeze+input-grad",
                    trainable=AUTHORS_FREEZE_LORA_ALL,
                    input_grad=True,
                )
            else:
                af, afig = base, ig
            h0 = base["backprop_flops"]
            ew = base["backward_elementwise"] + (
                base["forward_elementwise"] - base["forward_nograd_elementwise"]
            )
            t1_delta = base["linear_layers_analytic_gemm"] - base["linear_layers_analytic_table1"]
            mods = base.get("module_flops", {})
            trained_fwd = sum(
                mods.get(n, {}).get("fwd_nograd", 0.0)
                for n in ("backbone.network.3", "neck", "head")
            )
            vals = dict(
                H0=h0,
                H1=h0 + ew,
                H2=h0 - t1_delta,
                H3=ig["backprop_flops"],
                H4=af["backprop_flops"],
                H5=afig["backprop_flops"],
                H6=h0 + trained_fwd,
                H7=h0 * 64,
            )
            row = dict(
                model=pr["model"],
                scope=pr["scope"],
                method=method,
                label=_label(method, r),
                r=r,
                paper_mflops=as_number(pr["mflops"]),
                paper_speedup=as_number(pr["speedup"]),
            )
            row.update({k: _mf(v) for k, v in vals.items()})
            out.append(row)
        full = next(o for o in out if o["method"] == "full_bp")
        for o in out:
            for k in HYPOTHESES:
                o[f"{k}_ratio"] = round(o[k] / o["paper_mflops"], 3)
                o[f"{k}_speedup"] = round(full[k] / o[k], 3)
        summary = []
        for k, desc in HYPOTHESES.items():
            errs = [abs(o[f"{k}_ratio"] - 1) for o in out]
            sp_errs = [abs(o[f"{k}_speedup"] / o["paper_speedup"] - 1) for o in out]
            summary.append(
                dict(
                    hypothesis=k,
                    description=desc,
                    mean_abs_mflops_error_pct=round(100 * sum(errs) / len(errs), 1),
                    max_abs_mflops_error_pct=round(100 * max(errs), 1),
                    mean_abs_speedup_error_pct=round(100 * sum(sp_errs) / len(sp_errs), 1),
                    max_abs_speedup_error_pct=round(100 * max(sp_errs), 1),
                    rows_speedup_off_10pct=sum(e > SPEEDUP_TOLERANCE for e in sp_errs),
                )
            )
        return out, summary

    def _hypothesis_stage_input(self) -> list[dict[str, Any]]:
        """H3 (the gradient of the stage input) on every model's partial Full BP (Table 2)."""
        t2 = self.paper_rows("classification.csv", 2)
        fb = []
        cls_models = [m for m in MODEL_ORDER if MODELS[m].paper and MODELS[m].task == "cls"]
        for model in cls_models:
            rows = [r for r in t2 if r["model"] == model and r["scope"] == "partial"]
            if not rows:
                continue
            cfg = self.find_config(2, model, "partial", "full_bp", None, "cifar100")
            base = self.record(cfg)
            ig = self.record(cfg, tag="input-grad", input_grad=True)
            paper_full = next(
                (as_number(r["mflops"]) for r in rows if r["method"] == "full_bp"), None
            )
            src = "paper"
            if paper_full is None:  # unreadable cell: paper MFLOPs x paper speedup of the rest
                derived = [
                    as_number(r["mflops"]) * as_number(r["speedup"])
                    for r in rows
                    if as_number(r["mflops"]) and as_number(r["speedup"])
                ]
                paper_full = sum(derived) / len(derived) if derived else None
                src = f"mean of MFLOPs x speedup over {len(derived)} rows"

            def ratio(v: float, paper_full: float | None = paper_full) -> float | None:
                return round(v / 1e6 / paper_full, 3) if paper_full else None

            fb.append(
                dict(
                    model=model,
                    paper_full_bp_mflops=round(paper_full, 2) if paper_full else None,
                    paper_source=src,
                    H0=_mf(base["backprop_flops"]),
                    H0_ratio=ratio(base["backprop_flops"]),
                    H3=_mf(ig["backprop_flops"]),
                    H3_ratio=ratio(ig["backprop_flops"]),
                    stage_input_gx=_mf(ig["backprop_flops"] - base["backprop_flops"]),
                    elementwise_estimate=_mf(base["backward_elementwise"]),
                )
            )
        return fb

    def _hypothesis_lora_all(self) -> list[dict[str, Any]]:
        """H4 on every LoRA-all row of Tables 2 and 5: the authors' freeze configs keep every
        non-LoRA parameter of the trained scope trainable (partial: the last stage; full
        training: ``freeze_layers = ['~backbone.lora']``, nothing frozen but the LoRA
        bases)."""
        from ..presets import get_preset

        cls = self.paper_rows("classification.csv")
        la, seen = [], set()
        for pr in cls:
            if pr["method"] != "lora_all" or pr["table"] not in ("2", "5"):
                continue
            key = (pr["model"], pr["scope"])
            if key in seen:
                continue
            seen.add(key)
            model, scope = key
            table = int(pr["table"])
            full_rec = self.record(
                self.find_config(table, model, scope, "full_bp", None, "cifar100")
            )
            cfg = self.find_config(table, model, scope, "lora_all", None, "cifar100")
            base = self.record(cfg)
            trainable = get_preset(model, "full_bp", scope).trainable
            af = self.record(cfg, tag="authors-freeze", trainable=trainable)
            paper_full = next(
                (
                    as_number(r["mflops"])
                    for r in cls
                    if r["table"] == pr["table"]
                    and r["model"] == model
                    and r["scope"] == scope
                    and r["method"] == "full_bp"
                ),
                None,
            )
            p_mf, p_sp = as_number(pr["mflops"]), as_number(pr["speedup"])
            if p_sp is None and p_mf and paper_full:
                p_sp = paper_full / p_mf
            fb_ours = full_rec["backprop_flops"]
            la.append(
                dict(
                    table=table,
                    model=model,
                    scope=scope,
                    paper_mflops=p_mf,
                    paper_speedup=round(p_sp, 3) if p_sp else None,
                    ours_mflops=_mf(base["backprop_flops"]),
                    ours_speedup=round(fb_ours / base["backprop_flops"], 3),
                    authors_freeze_mflops=_mf(af["backprop_flops"]),
                    authors_freeze_speedup=round(fb_ours / af["backprop_flops"], 3),
                    authors_freeze_trainable=" ".join(trainable),
                    ours_trainable_params=base["trainable_params"],
                    authors_freeze_trainable_params=af["trainable_params"],
                )
            )
        return la

    def _hypothesis_half_crop(self) -> list[dict[str, Any]]:
        """Table 3: our figures are about twice the paper's. Per row: both variants at the
        configs' 512x512 crop, our count halved (a uniform factor 1/2), and a half-size crop
        (256 x 512 pixels); LoRA rows also with the authors' variant trained under
        ``lora_train='scope'`` and under the authors' plain-LoRA freeze transferred to
        Segformer (adapters + everything outside the backbone: the whole decode head)."""
        sg = []
        fulls: dict[str, dict[str, float]] = {}
        for pr in self.paper_rows("segmentation.csv", 3):
            method, r, scope = pr["method"], rint(pr.get("r")), pr["scope"]
            cfg = self.find_config(3, pr["model"], scope, method, r, "cityscapes")
            base = self.record(cfg)
            half = self.record(cfg, tag="crop-256x512", size=(256, 512))
            auth = self.authors_record(cfg, method, base)
            auth_cfg = (cfg[0], {**cfg[1], **authors_options(method)})
            auth_half = self.record(auth_cfg, tag="crop-256x512", size=(256, 512))
            p_mf = as_number(pr["mflops"])
            vals = dict(
                ours_512x512=base["backprop_flops"],
                ours_256x512=half["backprop_flops"],
                authors_512x512=auth["backprop_flops"],
                authors_half=auth["backprop_flops"] / 2,
                authors_256x512=auth_half["backprop_flops"],
            )
            if method == "lora":
                scope_cfg = (cfg[0], {**auth_cfg[1], "lbp.lora_train": "scope"})
                vals["authors_scope_half"] = self.record(scope_cfg)["backprop_flops"] / 2
                prefix = "backbone.layers.3.1.*." if scope == "partial" else "backbone.*."
                dec = self.record(
                    auth_cfg, tag="decoder-trains", trainable=[prefix + "lora_*", "decode_head.*"]
                )
                vals["authors_decoder_half"] = dec["backprop_flops"] / 2
            if method == "full_bp":
                fulls[scope] = dict(vals, paper=p_mf)
            row: dict[str, Any] = dict(
                scope=scope,
                method=method,
                label=_label(method, r),
                r=r,
                paper_mflops=p_mf,
            )
            for k, v in vals.items():
                row[k] = _mf(v)
                row[f"ratio_{k.removeprefix('ours_')}"] = round(v / 1e6 / p_mf, 3)
            sg.append(row)
        for row in sg:
            f = fulls[row["scope"]]
            row["paper_speedup"] = round(f["paper"] / row["paper_mflops"], 3)
            row["ours_speedup_512x512"] = round(f["ours_512x512"] / 1e6 / row["ours_512x512"], 3)
            row["ours_speedup_256x512"] = round(f["ours_256x512"] / 1e6 / row["ours_256x512"], 3)
        return sg

    def _hypothesis_efficientformerv2(self) -> list[dict[str, Any]]:
        """EfficientFormerV2 (Tables 2, 5): every printed row in both variants and under

        * ``V2-DS`` (partial training): the attention-downsampling block into the last stage
          (the authors' ``network.5``, timm ``stages.3.downsample``) trains too, its q / k / v
          / proj converted as in full training (authors' variant);
        * ``V2-FFN`` (LBP-WHT rows): only the FFN 1x1 convs converted, the attention layers
          left plain, as a bypassed wrapper would leave them (authors' variant).
        """
        from ..presets import get_preset

        out = []
        for pr in self.paper_rows("classification.csv"):
            if not pr["model"].startswith("efficientformerv2") or pr["table"] not in ("2", "5"):
                continue
            table, model, scope, method = int(pr["table"]), pr["model"], pr["scope"], pr["method"]
            r = rint(pr.get("r"))
            if not (as_number(pr["mflops"]) or as_number(pr["speedup"])):
                continue
            cfg = self.find_config(table, model, scope, method, r, "cifar100")
            auth_cfg = (cfg[0], {**cfg[1], **authors_options(method)})
            row: dict[str, Any] = dict(
                table=table,
                model=model,
                scope=scope,
                method=method,
                label=_label(method, r),
                r=r,
                paper_mflops=as_number(pr["mflops"]),
                paper_speedup=as_number(pr["speedup"]),
                corrected=_mf(self.record(cfg)["backprop_flops"]),
                authors=_mf(self.authors_record(cfg, method, self.record(cfg))["backprop_flops"]),
            )
            if scope == "partial":
                kw: dict[str, Any] = {"r": r or 4, "variant": "authors"}
                if method == "lora_all":
                    kw["lora_train"] = "scope"
                preset = get_preset(model, method, "full", **kw)
                rules = [
                    dict(rule, target=rule["target"].replace("stages.*.", "stages.3."))
                    for rule in preset.rules
                    if ".downsample." in rule["target"]
                ]
                part = get_preset(model, method, "partial", **kw).trainable
                if method in ("full_bp", "lbp_wht") or kw.get("lora_train") == "scope":
                    trainable = ["backbone.timm_model.stages.3.*", "head.*"]
                else:
                    trainable = list(part)
                trainable += [f"{rule['target']}.lora_{ab}" for rule in rules
                              if rule["method"] != "lbp" for ab in ("A", "B")]  # fmt: skip
                rec = self.record(
                    auth_cfg, tag="v2-ds", extra_rules=rules or None, trainable=trainable
                )
                row["V2-DS"] = _mf(rec["backprop_flops"])
            if method == "lbp_wht":
                rules = [
                    rule
                    for rule in get_preset(model, method, scope, r=r, variant="authors").rules
                    if ".mlp." in rule["target"]
                ]
                plain = (cfg[0], {**auth_cfg[1], "lbp.method": "full_bp"})
                row["V2-FFN"] = _mf(self.record(plain, tag="v2-ffn", extra_rules=rules)
                                    ["backprop_flops"])  # fmt: skip
            out.append(row)
        for row in out:
            full = next(
                o for o in out
                if (o["table"], o["model"], o["scope"], o["method"])
                == (row["table"], row["model"], row["scope"], "full_bp")
            )  # fmt: skip
            for k in ("corrected", "authors", "V2-DS", "V2-FFN"):
                if row.get(k) is None:
                    continue
                fk = full.get(k if k != "V2-FFN" else "authors")
                if row["paper_mflops"]:
                    row[f"{k}_ratio"] = round(row[k] / row["paper_mflops"], 3)
                if fk:
                    row[f"{k}_speedup"] = round(fk / row[k], 3)
                    if row["paper_speedup"]:
                        row[f"{k}_speedup_ratio"] = round(fk / row[k] / row["paper_speedup"], 3)
        return out

    # ----------------------------------------------------------------------------- a run
    def run(
        self, tables: Sequence[int] = COST_TABLES, *, hypotheses: bool = True, command: str = ""
    ) -> dict[str, Any]:
        """Write ``tables`` (and the hypotheses), then ``run_info.json`` and ``README.md``.

        A run of every table with the hypotheses replaces ``run_info.json``; a partial run
        keeps the last full run's provenance there and adds itself under ``partial_runs``
        (replacing an earlier partial run of the same tables), so the README still says how
        the files it did not regenerate were made. Returns this run's provenance.
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
        if hypotheses:
            self.hypotheses()
        self.write_agreement()
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
        full = set(tables) == set(COST_TABLES) and hypotheses
        if not full:
            meta["tables"] = sorted(tables)
            meta["hypotheses"] = hypotheses
        write_record(self.out / "run_info.json", merge_run_info(self.run_info(), meta, full))
        self.write_readme()
        return meta

    def write_agreement(self) -> list[dict[str, Any]]:
        """``agreement.csv`` (every printed cost cell of Tables 2, 3, 5, 7, both variants, the
        explanation of each cell more than 10% off), ``agreement_summary.csv``,
        ``hypotheses_by_cell.csv`` and ``agreement.{png,pdf}`` from the tables and hypothesis
        files under ``out`` (:mod:`lbp_wht.reporting.cost_agreement`)."""
        from .cost_agreement import write_agreement

        return write_agreement(self.out, read_csv, write_rows_csv)

    def run_info(self) -> dict[str, Any]:
        return read_record(self.out / "run_info.json") or {}

    # ----------------------------------------------------------------------------- README
    def write_readme(self) -> Path:
        """``README.md`` from the files under ``out`` (template ``cost_readme.md.j2``)."""
        return write_text(self.out / "README.md", _render("cost_readme.md.j2", **self.findings()))

    def findings(self) -> dict[str, Any]:
        """The facts the README states, read from the files under ``out``."""
        names = (
            "table1",
            *(f"table{t}" for t in (2, 3, 5, 6, 7)),
            "hypotheses_summary",
            "hypotheses_full_bp",
            "hypotheses_lora_all",
            "hypotheses_segmentation",
            "hypotheses_efficientformerv2",
            "hypotheses_index",
            "agreement",
            "agreement_summary",
        )
        csvs = {name: read_csv(self.out / f"{name}.csv") for name in names}
        tables = {t: csvs[f"table{t}"] for t in (2, 3, 5, 6, 7)}
        t2, t5, t6, t7 = tables[2], tables[5], tables[6], tables[7]
        hla, hseg = csvs["hypotheses_lora_all"], csvs["hypotheses_segmentation"]
        l1 = dict(model="efficientformer-l1", scope="partial")
        fb6 = find_row(t6, method="full_bp")
        t6_la = find_row(t6, method="lora_all")
        return dict(
            info=self.run_info(),
            has_t2=bool(t2),
            has_t6=bool(t6),
            t1=[typed(r) for r in csvs["table1"]],
            t2_partial=[
                typed(r)
                for r in t2
                if r["in_paper"] == "True" and r["paper_mflops"] and r["scope"] == "partial"
            ],
            agreement=_agreement(tables),
            t2_full=find_row(t2, **l1, method="full_bp"),
            t7_full=find_row(t7, **l1, method="full_bp"),
            t2_lp8=find_row(t2, **l1, method="lbp_wht", r="8"),
            t7_lp8=find_row(t7, **l1, method="lbp_wht", r="8"),
            hsum=[typed(r) for r in csvs["hypotheses_summary"]],
            hla=[typed(r) for r in hla],
            hseg=[typed(r) for r in hseg],
            hfb=[typed(r) for r in csvs["hypotheses_full_bp"]],
            hv2=[typed(r) for r in csvs["hypotheses_efficientformerv2"]],
            v2=_v2_facts(
                csvs["hypotheses_efficientformerv2"], self.paper_rows("classification.csv")
            ),
            seg=dict(
                _seg_facts(hseg),
                config=(find_row(tables[3], scope="partial", method="lbp_wht", r="2") or {}).get(
                    "config"
                ),
            ),
            gx_effect=_gx_effect(tables),
            hindex=[typed(r) for r in csvs["hypotheses_index"]],
            v2_full_ratios=_v2_full_ratios(tables),
            swin=_swin_rows(t2, t5),
            low_rank=[
                typed(r)
                for r in csvs["agreement"]
                if r["method"] == "lbp_wht"
                and r["within_10pct"] != "True"
                and not r["model"].startswith(("efficientformerv2", "segformer"))
            ],
            agree=[typed(r) for r in csvs["agreement_summary"]],
            off=[typed(r) for r in csvs["agreement"] if r["within_10pct"] != "True"],
            fb6=fb6,
            t6_la=t6_la,
            t6=[typed(r) for r in t6],
            t6_act_within=sum(
                abs(
                    as_number(r["ours_weight_layer_input_mb_batch64"])
                    / as_number(r["paper_activation_mb"])
                    - 1
                )
                <= SPEEDUP_TOLERANCE + 1e-9
                for r in t6
                if as_number(r.get("paper_activation_mb"))
            ),  # fmt: skip
            t6_all_to_weight=(
                as_number(fb6["ours_activation_mb_batch64"])
                / as_number(fb6["ours_weight_layer_input_mb_batch64"])
                if fb6
                else None
            ),
            lora_adapters=self._lora_adapters_x64(),
            memory=self._lbp_memory_check(),
        )

    def _rec(self, stem: str) -> dict[str, Any] | None:
        return read_record(self.records / f"{stem}.json")

    def _lora_adapters_x64(self) -> dict[str, float] | None:
        """64 x fp32 bytes of EfficientFormer-L1 partial LoRA-all adapters with rank 8
        everywhere and no head (the hypothesis for Table 6's 44 MB)."""
        rec = self._rec("efficientformer-l1_partial_lora-all_cifar100")
        if not rec:
            return None
        n = sum(8 * (r["cx"] + r["cy"]) for r in rec["layers"] if r["method"] == "lora")
        return dict(params=n, mb=n * 4 * 64 / 1e6)

    def _lbp_memory_check(self) -> list[dict[str, Any]]:
        """Per-layer saved bytes of plain vs LBP-WHT layers: R/49 on 7x7 maps, R/64 on whole
        8x8 patches (EfficientFormer-L1 full training, LP_L1-4); one row per map size."""
        plain = self._rec("efficientformer-l1_full_full-bp_cifar100")
        lbp = self._rec("efficientformer-l1_full_lp-l1-r4_cifar100")
        if not plain or not lbp:
            return []
        p_rows = {r["name"]: r for r in plain["layers"]}
        rows, seen = [], set()
        for r in lbp["layers"]:
            if r["method"] != "lbp" or r["hw"] in seen or r["name"] not in p_rows:
                continue
            p = p_rows[r["name"]]
            if not p["saved_bytes"]:
                continue
            seen.add(r["hw"])
            h, w = (int(v) for v in r["hw"].split("x"))
            rows.append(
                dict(
                    layer=r["name"],
                    map=r["hw"],
                    R=r["rank"],
                    P=r["patches"],
                    plain_kb=p["saved_bytes"] / 1e3,
                    lbp_kb=r["saved_bytes"] / 1e3,
                    ratio=r["saved_bytes"] / p["saved_bytes"],
                    expected=r["patches"] * r["rank"] / (h * w),
                )
            )
        return rows


def merge_run_info(old: dict[str, Any], meta: dict[str, Any], full: bool) -> dict[str, Any]:
    """``run_info.json`` after a run: a full run's ``meta`` alone; a partial run's ``meta``
    under ``partial_runs`` of the old provenance (replacing an older partial run of the same
    tables), or on its own where there is no old provenance."""
    if full or not old:
        return meta
    partial = [
        p
        for p in old.get("partial_runs", [])
        if (p.get("tables"), p.get("hypotheses")) != (meta["tables"], meta["hypotheses"])
    ]
    return dict(old, partial_runs=[*partial, meta])


# ------------------------------------------------------------------------------ the rows
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
    # Same count with LBP projections priced as in Table 1 (1 FLOP per element and basis, no
    # bias row) instead of as executed GEMMs.
    t1 = (
        rec["backprop_flops"]
        - rec["linear_layers_analytic_gemm"]
        + rec["linear_layers_analytic_table1"]
    )
    p_mf = as_number(pr["mflops"]) if pr else None
    p_sp = as_number(pr.get("speedup")) if pr else None
    p_sp_src = "paper" if p_sp is not None else ""
    if p_sp is None and p_mf and paper_full:
        p_sp, p_sp_src = paper_full / p_mf, "paper MFLOPs ratio"
    return dict(
        table=table,
        model=model,
        scope=scope,
        method=method,
        label=_label(method, r),
        r=r,
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
    t1 = (
        rec["backprop_flops"]
        - rec["linear_layers_analytic_gemm"]
        + rec["linear_layers_analytic_table1"]
    )
    return dict(
        authors_mflops=round(mf, 2),
        authors_speedup=round(sp, 3),
        authors_ratio_mflops=round(mf / p_mf, 3) if p_mf else None,
        authors_ratio_speedup=round(sp / p_sp, 3) if p_sp else None,
        authors_t1conv_mflops=round(t1 / 1e6, 2),
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
    bases = select_bases("lp_l1", r=4)[:R]
    x = torch.randn(1, L, cx)
    plain = nn.Linear(cx, cy)
    x_req = x.clone().requires_grad_(True)
    m_plain = measure_step(plain, x_req, elementwise=False)
    lbp = LBPLinear.from_module(
        nn.Linear(cx, cy),
        LBPConfig(selection="explicit", bases=bases),
        geometry=MapGeometry(hw=(7, 7)),
    )
    m_lbp = measure_step(lbp, x_req, elementwise=False)
    lbp_nb = LBPLinear.from_module(
        nn.Linear(cx, cy, bias=False),
        LBPConfig(selection="explicit", bases=bases),
        geometry=MapGeometry(hw=(7, 7)),
    )
    m_lbp_nb = measure_step(lbp_nb, x_req, elementwise=False)
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


# ------------------------------------------------------------------------ README facts
def _agreement(tables: dict[int, list[dict[str, str]]]) -> list[dict[str, Any]]:
    """Per table: rows, how many have paper MFLOPs / speedups, the spread of ours/paper."""
    ov = []
    for t, rows in tables.items():
        withp = [r for r in rows if as_number(r.get("ratio_mflops"))]
        sp = [r for r in rows if as_number(r.get("ratio_speedup"))]
        ratios = sorted(as_number(r["ratio_mflops"]) for r in withp)
        ov.append(
            dict(
                table=t,
                rows=len(rows),
                with_paper_mflops=len(withp),
                median_ratio=ratios[len(ratios) // 2] if ratios else None,
                min_ratio=ratios[0] if ratios else None,
                max_ratio=ratios[-1] if ratios else None,
                with_paper_speedup=len(sp),
                speedup_off=sum(r["speedup_differs"] == "True" for r in sp),
            )
        )
    return ov


def _v2_full_ratios(tables: dict[int, list[dict[str, str]]]) -> list[dict[str, Any]]:
    """Our EfficientFormerV2 Full BP MFLOPs / the paper's, per model and scope."""
    vals: dict[tuple[str, str], dict[str, Any]] = {}
    for t in (2, 5):
        for r in tables.get(t, []):
            if r["model"].startswith("efficientformerv2") and r["method"] == "full_bp":
                x = as_number(r["ratio_mflops"])
                if x is not None:
                    vals.setdefault(
                        (r["model"], r["scope"]), dict(ratio=x, model=r["model"], scope=r["scope"])
                    )
    return list(vals.values())


def _swin_rows(t2: list[dict[str, str]], t5: list[dict[str, str]]) -> list[dict[str, Any]]:
    """SwinV2's LBP-WHT rows with a paper cost (Table 2 partial, Table 5 full), both
    variants."""
    return [
        typed(r)
        for rows in (t2, t5)
        for r in rows
        if r["model"] == "swinv2-small-w8"
        and r["method"] == "lbp_wht"
        and r["in_paper"] == "True"
        and (r["paper_mflops"] or r["paper_speedup_source"] == "paper")
    ]


def _dev(v: Any) -> float | None:
    """``|v - 1|`` in percent (None for an empty cell)."""
    x = as_number(v)
    return None if x is None else 100 * abs(x - 1)


def _v2_facts(hv2: list[dict[str, str]], paper: list[dict[str, str]]) -> dict[str, Any]:
    """The EfficientFormerV2 findings the README words: what V2-DS and V2-FFN do to which
    rows, S0 full LoRA-all, the paper's LoRA-all / Full BP per model."""
    if not hv2:
        return {}
    part = [r for r in hv2 if r["scope"] == "partial"]
    ds = [r for r in part if as_number(r.get("V2-DS_ratio"))]
    la = find_row(hv2, table="2", model="efficientformerv2-s0", scope="full", method="lora_all")
    fb = find_row(hv2, table="2", model="efficientformerv2-s0", scope="full", method="full_bp")

    def paper_mf(table: str, model: str, scope: str, method: str) -> float | None:
        row = find_row(paper, table=table, model=model, scope=scope, method=method)
        return as_number(row["mflops"]) if row else None

    la_over_fb = {}
    for model in ("efficientformer-l1", "efficientformer-l7", "efficientformerv2-l",
                  "swinv2-small-w8", "efficientformerv2-s0"):  # fmt: skip
        a, b = paper_mf("5", model, "full", "lora_all"), paper_mf("5", model, "full", "full_bp")
        if a and b:
            la_over_fb[model] = a / b
    t7 = (
        paper_mf("7", "efficientformer-l1", "partial", "lora_all"),
        paper_mf("7", "efficientformer-l1", "partial", "full_bp"),
    )
    return dict(
        ds_full_bp_dev=max(_dev(r["V2-DS_ratio"]) for r in ds if r["method"] == "full_bp"),
        ds_fits=[typed(r) for r in ds if r["method"] != "full_bp" and _dev(r["V2-DS_ratio"]) <= 10],
        ds_misses=[typed(r) for r in ds if _dev(r["V2-DS_ratio"]) > 10],
        ffn_lp2=[as_number(r["V2-FFN_ratio"]) for r in part
                 if r["method"] == "lbp_wht" and r["r"] == "2" and as_number(r.get("V2-FFN_ratio"))],
        lp2=[typed(r) for r in part if r["method"] == "lbp_wht" and r["r"] == "2"],
        s0_la=typed(la) if la else None,
        s0_la_over_fb=(as_number(la["authors"]) / as_number(fb["corrected"])) if la and fb else None,
        paper_la_over_fb=la_over_fb,
        t7_la_over_fb=(t7[0] / t7[1]) if all(t7) else None,
    )  # fmt: skip


def _seg_facts(hseg: list[dict[str, str]]) -> dict[str, Any]:
    """Table 3: the largest deviation of SEG-HALF on Full BP / LBP-WHT rows, the range of the
    half-crop deviations in full training, the LoRA rows under each freeze."""
    if not hseg:
        return {}
    fit = [r for r in hseg if r["method"] in ("full_bp", "lbp_wht")]
    crop = [_dev(r["ratio_256x512"]) for r in fit if r["scope"] == "full"]
    return dict(
        half_max_dev=max(_dev(r["ratio_authors_half"]) for r in fit),
        crop_full_min=min(crop),
        crop_full_max=max(crop),
        lora=[typed(r) for r in hseg if r["method"] in ("lora", "lora_all")],
    )


def _gx_effect(tables: dict[int, list[dict[str, str]]]) -> float | None:
    """The largest change (percent) the authors' variant makes to an LBP-WHT row of a model
    whose conversion it leaves as it is (EfficientFormer L1 / L7 / V2): the always-computed
    ``g_x`` alone."""
    devs = [
        _dev(as_number(r["authors_mflops"]) / as_number(r["ours_mflops"]))
        for t in (2, 5, 7)
        for r in tables.get(t, [])
        if r["method"] == "lbp_wht" and r["model"].startswith("efficientformer")
        and as_number(r.get("authors_mflops"))
    ]  # fmt: skip
    return max(devs) if devs else None
