"""Run records + cost records + the paper's numbers -> Tables 2-8 in the paper's layout.

Rows and columns follow the paper (Tables 2/5: Model, Method, R, Speedup, mAcc, MFLOPs, six
datasets; Table 3: two training scopes with Method, R, MFLOPs, City, VOC12A; Table 4: Method,
Rank, CF100, CF10; Table 6: Method, GFLOPs, activation / gradient memory, CF100, CF10; Table 7:
Method, Speedup, MFLOPs, Accuracy; Table 8: (Cx, Cy, L), Method, R, CPU / GPU speedup and
latency). Next to each of our numbers stands the paper's (from ``results/paper/*.csv``, never
typed here). :func:`build_table` builds one :class:`Table`; :func:`write_table` writes it as
``<out>/table<N>/table<N>.{md,csv,tex}``.

* Accuracy / mIoU cells: mean over seeds of the complete run records
  (``<run>/record.json``, ``status == "complete"``); ``mean ± std`` (sample std) when there
  are several seeds; the CSV also has ``_std`` and ``_n`` (number of seeds).
* mAcc: per seed, the mean over all six datasets; then mean ± std over the seeds that have all
  six. With any dataset missing the cell stays empty (a mean over fewer datasets is not mAcc).
  With other ``datasets`` than the six, mAcc is the mean over the datasets given (the note
  says so; the paper's six-dataset mAcc is then not shown beside it); with a single dataset
  there is no mAcc column.
* Speedup / MFLOPs / GFLOPs / memory: from the cost records (``results/cost/*.csv``, measured
  by :mod:`lbp_wht.integrations.cost_record`); speedup = Full BP MFLOPs / row MFLOPs of the
  same model and scope when the cost record does not carry it.
* Missing runs or costs are empty cells: nothing is ever filled in or interpolated.

Rows: the paper's rows of each table (from the reference CSVs). ``extra_rows`` adds rows that
exist only in the records (e.g. a new sweep over ``lbp.r``), marked ``(extra)``. ``models`` /
``datasets`` restrict the rows and dataset columns; for a model the paper does not have (e.g.
the CPU mini-reproduction's ``mini-efficientformer``) the rows come from its records, which
gives proxy tables in the paper's layout. Titles name the models of their rows (Table 4 of the
mini model says "mini EfficientFormer", not EfficientFormer-L1). Besides the paper's methods,
the head-only linear probe (``head_only``, label "Head only", R "-") may join Tables 2, 3, 5
and 7 as an extra / proxy row.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..experiments.catalog import read_paper_rows
from ..experiments.vocab import (
    CLS_DATASETS,
    DATASET_HEADERS,
    DATASETS,
    MODEL_NAMES,
    PAPER_MODELS,
    SEG_DATASETS,
    method_key,
    method_label,
    method_sort_key,
    method_spec,
    method_with,
    norm_dataset,
    rank_of,
    short_model_name,
)
from ..io import atomic_write
from ..runs.records import LOADING_LBP_KEYS, read_records
from .render import (
    RecordValueError,
    as_number,
    checked_number,
    markdown_table,
    render,
    write_rows_csv,
)

TABLES = ("2", "3", "4", "5", "6", "7", "8")


def rank_cell(key: tuple, lora_rank: Any = None) -> str:
    """The R column: number of WHT bases for LBP-WHT, the LoRA rank (8 unless given), '-' for
    Full BP and head only (:func:`lbp_wht.experiments.vocab.rank_of`)."""
    rank = rank_of(key, lora_rank)
    return "-" if rank is None else str(rank)


# ------------------------------------------------------------------------------- run records
def load_runs(
    roots: Sequence[str | os.PathLike], where: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Complete training records under ``roots`` -> one row per (cell, seed).

    ``where``: only records whose settings equal these, by dotted key into the record (e.g.
    ``{"lbp.padding": "zero", "lbp.options.keep_fraction": 0.3}``; a record without the key
    does not match).

    Columns: model, scope, dataset, method, select, r (key), seed, value, metric, path.
    Several records of the same cell and seed trained alike (e.g. a run repeated in a second
    work root; the same ``config_digest``): the newest wins. A record without a value (no
    evaluation) is left out.

    Raises:
        RecordValueError: a record whose ``value`` is not a finite number (names the file);
            two records of one cell and seed that trained differently (their ``config_digest``
            differs, e.g. a grid over ``lbp.padding``, ``lbp.options`` or the learning rate; for
            records without a digest: ``lbp`` settings beyond the key and loading switches): a
            table row holds one of them, and keeping the newest would drop the other silently
            (``where`` picks one).
    """
    cols = ["model", "scope", "dataset", "method", "select", "r", "seed", "value", "metric"]
    rows = []  # in the order of cols + [timestamp, path]
    present: set[str] = set()  # the where keys some record has
    considered = 0  # complete training records read
    for root in roots:
        if not Path(root).exists():
            continue
        for rec in read_records(root, pattern="**/record.json"):
            if rec.get("status") != "complete" or rec.get("kind", "train") != "train":
                continue
            considered += 1
            if where:
                got = {k: _setting(rec, k) for k in where}
                present.update(k for k, v in got.items() if v is not _MISSING)
                if any(got[k] != v for k, v in where.items()):
                    continue
            path = rec["_path"]
            value = checked_number(rec.get("value"), path, "value")
            if value is None or not rec.get("model") or not rec.get("method"):
                continue
            m, s, r = method_key(rec["method"], rec.get("select"), rec.get("r"), rec.get("rank"))
            cell = [rec["model"], rec.get("scope") or "partial", norm_dataset(rec.get("dataset"))]
            stamp = str(rec.get("timestamp") or "")
            lbp = rec.get("lbp") if isinstance(rec.get("lbp"), dict) else {}
            digest = str(rec.get("config_digest") or "")
            row = [*cell, m, s, r, rec.get("seed"), value, rec.get("metric"), stamp, path, lbp]
            rows.append([*row, digest])
    absent = [k for k in where or () if k not in present]
    if absent and considered:
        raise RecordValueError(
            f"--where {absent[0]}: no record under {[str(r) for r in roots]} has this key; "
            "keys are dotted paths into record.json (e.g. lbp.padding, lbp.options.keep_fraction, "
            "config_digest)"
        )
    df = pd.DataFrame(rows, columns=cols + ["timestamp", "path", "lbp", "digest"])
    if df.empty:
        return df.drop(columns=["lbp", "digest"])
    key = ["model", "scope", "dataset", "method", "select", "r", "seed"]
    for _, group in df[df.duplicated(key, keep=False)].groupby(key, dropna=False, sort=False):
        _check_trained_alike(group)
    df = df.sort_values("timestamp").drop_duplicates(key, keep="last")
    return df.drop(columns=["lbp", "digest"]).reset_index(drop=True)


_MISSING = object()


def add_where_argument(parser: Any) -> None:
    """``--where KEY=VALUE ...`` of the table and figure tools (:func:`parse_where`)."""
    parser.add_argument(
        "--where",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="only records with these settings (dotted keys of the record, e.g. lbp.padding=zero "
        "or lbp.options.keep_fraction=0.3; VALUE read as JSON, else as text)",
    )


def parse_where(items: Sequence[str]) -> dict[str, Any]:
    """``["lbp.padding=zero", "lbp.options.keep_fraction=0.3"]`` -> the ``where`` of
    :func:`load_runs` (each value read as JSON, else kept as text).

    Raises:
        ValueError: an item that is not ``KEY=VALUE``, naming it.
    """
    where: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where {item!r}: expected KEY=VALUE (e.g. lbp.padding=zero)")
        try:
            where[key] = json.loads(value)
        except ValueError:
            where[key] = value
    return where


def _setting(rec: Mapping[str, Any], dotted: str) -> Any:
    node: Any = rec
    for part in dotted.split("."):
        node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
    return node


def _check_trained_alike(group: pd.DataFrame) -> None:
    """Refuse records of one cell and seed whose configs differ (``config_digest``; where a
    record has none, its ``lbp`` settings in the keys both record, loading switches aside),
    naming the ``lbp`` settings that differ."""
    first = group.iloc[0]
    for _, other in group.iloc[1:].iterrows():
        a, b = first["lbp"], other["lbp"]
        diff = sorted(k for k in a.keys() & b.keys() if k not in LOADING_LBP_KEYS and a[k] != b[k])
        digests = first["digest"], other["digest"]
        if diff or (all(digests) and digests[0] != digests[1]):
            what = "; ".join(f"lbp.{k} {a[k]!r} vs {b[k]!r}" for k in diff)
            what = what or (
                f"config_digest {digests[0]} vs {digests[1]} (the lbp blocks agree: the schedule, "
                "optimiser, data or loading settings differ)"
            )
            pick = f"lbp.{diff[0]}" if diff else "config_digest"
            raise RecordValueError(
                f"{first['path']} and {other['path']} are one table cell (model "
                f"{first['model']}, {first['scope']}, {first['dataset']}, method "
                f"{first['method']}, seed {first['seed']}) trained differently: {what}. A table "
                f"row shows one configuration: pick one with --where {pick}=VALUE "
                "(make_tables), or build each from its own work root (--runs)"
            )


def _key_mask(df: pd.DataFrame, model: str, scope: str, key: tuple) -> pd.Series:
    method, select, r = key
    mask = (df["model"] == model) & (df["scope"] == scope) & (df["method"] == method)
    mask &= df["select"].isna() if select is None else (df["select"] == select)
    mask &= df["r"].isna() if r is None else (df["r"] == r)
    return mask


@dataclass
class Stat:
    """Our value of one cell: mean, sample std (None with one seed) and number of seeds;
    ``text`` stands in for a value that does not apply (printed as is, e.g. ``"-"``)."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    text: str | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        vals = [float(v) for v in values]
        if not vals:
            return cls()
        s = pd.Series(vals)
        return cls(float(s.mean()), float(s.std(ddof=1)) if len(vals) > 1 else None, len(vals))


def cell_stat(runs: pd.DataFrame, model: str, scope: str, key: tuple, dataset: str) -> Stat:
    if runs.empty:
        return Stat()
    sel = runs[_key_mask(runs, model, scope, key) & (runs["dataset"] == dataset)]
    return Stat.of(sel["value"].tolist())


def macc_stat(
    runs: pd.DataFrame, model: str, scope: str, key: tuple, datasets: Sequence[str]
) -> Stat:
    """mAcc over ``datasets``: per seed with all of them, then mean ± std over seeds."""
    if runs.empty:
        return Stat()
    sel = runs[_key_mask(runs, model, scope, key) & runs["dataset"].isin(datasets)]
    per_seed = []
    for _, g in sel.groupby("seed", dropna=False):
        if set(g["dataset"]) >= set(datasets):
            per_seed.append(float(g["value"].mean()))
    return Stat.of(per_seed)


# ------------------------------------------------------------------------------ cost records
COST_ALIASES = {
    "mflops": ("ours_mflops", "bp_mflops", "mflops_ours", "measured_mflops", "mflops"),
    "speedup": ("ours_speedup", "speedup_ours", "speedup"),
    "gflops": ("ours_gflops", "gflops_ours", "bp_gflops", "gflops"),
    "activation_mb": (
        "ours_activation_mb",
        "activation_mb_ours",
        "saved_activation_mb",
        "activation_mb",
    ),
    "gradient_mb": ("ours_gradient_mb", "gradient_mb_ours", "weight_grad_mb", "gradient_mb"),
}


def load_cost(cost_dir: str | os.PathLike | None) -> pd.DataFrame:
    """Our measured cost per (model, scope, method key) from every CSV under ``cost_dir``.

    A cost CSV needs columns model, scope, method (and select / r / rank for LBP rows) and our
    measurement in one of the :data:`COST_ALIASES` columns; columns holding the paper's values
    (``paper_*``) are ignored. The ``table`` column (else a ``table<N>`` file name) says which
    paper table a row was measured for (:func:`cost_of` prefers that table's rows). Several
    rows of the same table and key: the first wins. Hidden files (a writer's temporary file
    left by a kill) are skipped.

    Raises:
        RecordValueError: a measurement cell that is not empty and not a finite number (names
            the CSV file and the column).
    """
    out_cols = ["table", "model", "scope", "method", "select", "r", *COST_ALIASES]
    rows: list[list] = []  # in the order of out_cols
    if cost_dir is None or not Path(cost_dir).exists():
        return pd.DataFrame(columns=out_cols)
    for path in sorted(Path(cost_dir).rglob("*.csv")):
        if path.name.startswith("."):
            continue
        try:  # only an empty cell is missing: "nan" / "inf" in a cost column are errors
            df = pd.read_csv(path, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        cols = {c.lower(): c for c in df.columns}
        if not {"model", "method"} <= set(cols):
            continue
        found = {
            k: next((cols[a] for a in al if a in cols), None) for k, al in COST_ALIASES.items()
        }
        if not any(found.values()):
            continue
        stem_table = path.stem[5:] if path.stem.startswith("table") else None
        for _, raw in df.iterrows():
            get = {k: raw[c] for k, c in cols.items()}.get  # by lower-case column name
            m, s, r = method_key(str(get("method")), _str(get("select")), get("r"), get("rank"))
            table = _str(get("table")) or stem_table
            table = str(_int_or_str(table)) if table is not None else None
            row = [table, str(get("model")), _str(get("scope")) or "partial", m, s, r]
            for c in found.values():  # in the order of COST_ALIASES
                v = None if c is None or pd.isna(raw[c]) else raw[c]
                row.append(checked_number(v, path, c) if c is not None else None)
            rows.append(row)
    df = pd.DataFrame(rows, columns=out_cols)
    return df.drop_duplicates(["table", "model", "scope", "method", "select", "r"], keep="first")


def _int_or_str(v: Any) -> Any:
    f = as_number(v)
    return int(f) if f is not None and f == int(f) else v


def _str(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v).strip()
    return s or None


def cost_of(
    cost: pd.DataFrame,
    model: str,
    scope: str,
    key: tuple,
    table: str | None = None,
    only_table: bool = False,
) -> dict[str, float | None]:
    """Our cost figures of one row, with speedup derived from Full BP's MFLOPs if needed.

    Rows measured for ``table`` come first; backprop FLOPs per image do not depend on the
    table, so another table's row of the same model / scope / method is used otherwise, unless
    ``only_table`` (Table 6, whose GFLOPs and memory are accounted its own way).
    """
    out: dict[str, float | None] = dict.fromkeys(COST_ALIASES)
    if cost.empty:
        return out
    sel = cost[_key_mask(cost, model, scope, key)]
    if table is not None:
        mine = sel[sel["table"].astype(str) == str(table)]
        sel = mine if (only_table or not mine.empty) else sel
        if only_table:
            cost = cost[cost["table"].astype(str) == str(table)]
    if not sel.empty:
        out.update({k: as_number(sel.iloc[0][k]) for k in COST_ALIASES})
    if out["speedup"] is None and out["mflops"]:
        full = cost[_key_mask(cost, model, scope, (method_with(reference=True), None, None))]
        full_mflops = as_number(full.iloc[0]["mflops"]) if not full.empty else None
        if full_mflops:
            out["speedup"] = full_mflops / out["mflops"]
    return out


# ----------------------------------------------------------------------------- table model
@dataclass
class Column:
    """One metric of a table: our value (+ std, n) and the paper's, side by side."""

    name: str  # CSV column stem, e.g. "cifar100", "mflops"
    header: str  # as printed in the paper, e.g. "CF100"
    fmt: str = "{:.2f}"
    suffix: str = ""  # "×" for speedups


@dataclass
class Row:
    section: str
    model: str
    key: tuple
    rank: str
    extra: bool = False
    ours: dict[str, Stat] = field(default_factory=dict)
    paper: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Table:
    name: str  # "table2"
    title: str
    columns: list[Column]
    rows: list[Row]
    show_model: bool = True
    show_rank: bool = True  # Tables 6 and 7 print no R column
    notes: list[str] = field(default_factory=list)
    lead: list[tuple[str, str]] = field(default_factory=list)  # Table 8: extra leading cols


def _accuracy_cost_row(key: tuple) -> bool:
    """Rows of the accuracy-vs-cost tables (2, 3, 5, 7): the methods without bases (the
    paper's and the head-only linear probe, which joins as an extra / proxy row) and LP_L1-r
    of LBP-WHT."""
    spec = method_spec(key[0])
    return not spec.has_bases or (spec.bases_only and key[1] == "lp_l1")


def _table6_row(key: tuple) -> bool:
    """Rows of Table 6 (LBP-WHT combined with LoRA-all): the reference, LoRA on every layer,
    with or without bases."""
    spec = method_spec(key[0])
    return spec.reference or (spec.has_lora and spec.layers == "all")


#: Which record rows may join a table as extra rows (methods of that table's layout).
EXTRA_FILTER = {
    "2": _accuracy_cost_row,
    "3": _accuracy_cost_row,
    "4": lambda k: method_spec(k[0]).bases_only,
    "5": _accuracy_cost_row,
    "6": _table6_row,
    "7": _accuracy_cost_row,
}


def models_title(models: Sequence[str], default: str) -> str:
    """The model part of a table title: the models of its rows (in order), else ``default``
    (the paper's model for that table)."""
    seen = list(dict.fromkeys(models))
    return ", ".join(short_model_name(m) for m in seen) if seen else short_model_name(default)


def table_rows(
    table: str,
    paper_dir: Path,
    runs: pd.DataFrame,
    *,
    scopes: Sequence[str],
    datasets: Sequence[str],
    models: Sequence[str] | None = None,
    extra_rows: bool = False,
) -> list[tuple[str, str, tuple, dict]]:
    """The rows of a table as (scope, model, method key, paper row or {}).

    The paper's rows come first, in the paper's order. Record rows the paper does not have
    are added (sorted by method, after the paper rows of their model) with ``extra_rows``, and
    always for ``models`` the paper's table does not contain (e.g. the CPU mini model).
    """
    paper_models = set()
    groups: dict[tuple[str, str], list[tuple[tuple, dict]]] = {}
    for p in read_paper_rows(table, paper_dir):
        paper_models.add(p["model"])
        if p["scope"] not in scopes or (models and p["model"] not in models):
            continue
        key = method_key(p["method"], p["select"], p["r"], p["rank"])
        groups.setdefault((p["scope"], p["model"]), []).append((key, p))
    if not runs.empty:
        sub = runs[runs["scope"].isin(scopes) & runs["dataset"].isin(datasets)]
        if models:
            sub = sub[sub["model"].isin(models)]
        if not extra_rows:
            sub = sub[~sub["model"].isin(paper_models)]
        cols = ["scope", "model", "method", "select", "r"]
        for (scope, model, m, s, r), _ in sub.groupby(cols, dropna=False, sort=False):
            r = None if pd.isna(r) else int(r)
            key = method_key(m, _str(s), r, r)
            if not EXTRA_FILTER[table](key):
                continue
            rows = groups.setdefault((scope, model), [])
            if key not in [k for k, _ in rows]:
                rows.append((key, {}))
    out = []
    for scope in scopes:
        for (g_scope, model), items in groups.items():
            if g_scope != scope:
                continue
            out += [(scope, model, k, p) for k, p in items if p]
            extra = sorted((k for k, p in items if not p), key=method_sort_key)
            out += [(scope, model, k, {}) for k in extra]
    return out


def _head_only_note(rows: Sequence[Row]) -> list[str]:
    """Why head-only rows show no speedup (a one-item list where the table has such a row)."""
    mflops = [
        r.ours["mflops"].mean
        for r in rows
        if method_spec(r.key[0]).trains == "head" and "mflops" in r.ours
    ]
    if not any(v is not None for v in mflops):
        return []
    text = ", ".join(f"{v:.2g}" for v in mflops if v is not None)
    return [
        f"Head only: speedup shown as -. Its backprop is the task head's own weight gradient "
        f"({text} MFLOPs per image), so Full BP / head only measures how small the head is, "
        "not a saving of backpropagation through the backbone."
    ]


SECTION_TITLES = {
    "2": {"partial": "Partial Training: Training the Last Stage", "full": "Full Training"},
    "3": {
        "partial": "Partial Training: Training Last Stage + Decoder",
        "full": "Full Training",
    },
    "5": {"full": "Full Training"},
}


@dataclass
class _Inputs:
    """What every table is built from (see :func:`build_table`)."""

    paper_dir: Path
    runs: pd.DataFrame
    cost: pd.DataFrame
    models: Sequence[str] | None
    extra_rows: bool


def _paper_rank(key: tuple, paper: dict) -> str:
    return rank_cell(key, paper.get("rank") if paper else None)


def _rows(
    table: str,
    inp: _Inputs,
    columns: list[Column],
    *,
    scopes: Sequence[str],
    datasets: Sequence[str],
    rank: Callable[[tuple, dict], str] = _paper_rank,
    keep: Callable[[tuple], bool] = lambda key: True,
) -> list[Row]:
    """The rows of ``table`` (:func:`table_rows`) with our values (runs, cost) and the paper's:
    section title per scope from :data:`SECTION_TITLES`, rows the paper lacks for its own
    models marked extra."""
    rows = []
    for scope, model, key, p in table_rows(
        table,
        inp.paper_dir,
        inp.runs,
        scopes=scopes,
        datasets=datasets,
        models=inp.models,
        extra_rows=inp.extra_rows,
    ):
        if not keep(key):
            continue
        section = SECTION_TITLES.get(table, {}).get(scope, "")
        row = Row(section, model, key, rank(key, p), extra=not p and model in PAPER_MODELS)
        c = cost_of(inp.cost, model, scope, key, table=table, only_table=table == "6")
        for name in (col.name for col in columns):
            if name in datasets:
                row.ours[name] = cell_stat(inp.runs, model, scope, key, name)
            elif name == "macc":
                row.ours[name] = macc_stat(inp.runs, model, scope, key, datasets)
            elif name == "speedup" and method_spec(key[0]).trains == "head":
                row.ours[name] = Stat(text="-")  # see _head_only_note
            else:  # a cost figure (None: no record)
                v = c.get(name)
                row.ours[name] = Stat(v, None, 1) if v is not None else Stat()
            row.paper[name] = as_number(p.get(name)) if p else None
        rows.append(row)
    return rows


def _row_models(rows: Sequence[Row], inp: _Inputs) -> list[str]:
    """The models of the rows, else the requested ones (for the title of an empty table)."""
    return [r.model for r in rows] or list(inp.models or [])


def _one_model_table(
    name: str, title: str, default: str, columns: list[Column], rows: list[Row], inp: _Inputs
) -> Table:
    """A table of one paper model (3, 4, 6): ``{models}`` in ``title`` names the models of its
    rows (else ``default``); a Model column only where the rows have several."""
    models = _row_models(rows, inp)
    title = title.format(models=models_title(models, default))
    return Table(name, title, columns, rows, show_model=len(set(models)) > 1)


def _dataset_columns(datasets: Sequence[str]) -> list[Column]:
    return [Column(d, DATASET_HEADERS.get(d, d)) for d in datasets]


def build_classification(table: str, inp: _Inputs, datasets: Sequence[str] | None) -> Table:
    """Tables 2, 5 (Model, Method, R, Speedup, mAcc, MFLOPs, datasets) and 7.

    mAcc (Tables 2, 5) is the mean over the table's dataset columns: the paper's six by default,
    so our cell sits beside the paper's. With other dataset columns it is the mean over those
    (the note says which) and the paper's mAcc (over six) is left out as not comparable; with a
    single dataset column there is no mAcc column (it would repeat that column).
    """
    notes: list[str] = []
    paper_macc = False  # whether our mAcc is over the paper's six datasets
    if table == "7":
        ds = list(datasets or ["places365"])
        columns = [Column("speedup", "Speedup", "{:.1f}", "×"), Column("mflops", "MFLOPs")]
        columns += [Column(d, "Accuracy [%]" if d == "places365" else d) for d in ds]
        scopes = ["partial"]
    else:
        ds = list(datasets or CLS_DATASETS)
        columns = [Column("speedup", "Speedup", "{:.1f}", "×")]
        if len(ds) > 1:
            columns.append(Column("macc", "mAcc"))
        columns += [Column("mflops", "MFLOPs"), *_dataset_columns(ds)]
        scopes = ["partial", "full"] if table == "2" else ["full"]
        paper_macc = set(ds) == set(CLS_DATASETS)
        if paper_macc:
            notes.append(
                "mAcc: mean over the six datasets (per seed, then over seeds); empty unless all "
                "six ran."
            )
        elif len(ds) > 1:
            names = ", ".join(DATASET_HEADERS.get(d, d) for d in ds)
            notes.append(
                f"mAcc: mean over the {len(ds)} datasets of this table ({names}; per seed, then "
                f"over seeds), empty unless all {len(ds)} ran; not the paper's six-dataset mAcc, "
                "so its paper column is left empty."
            )
    rows = _rows(table, inp, columns, scopes=scopes, datasets=ds)
    notes += _head_only_note(rows)
    if not paper_macc:
        for row in rows:
            if "macc" in row.paper:
                row.paper["macc"] = None  # the paper's mAcc is over six datasets
    if table == "7":
        title = (
            f"Table 7: partial training (last stage) of "
            f"{models_title(_row_models(rows, inp), 'efficientformer-l1')} on "
            + ", ".join("Places365" if d == "places365" else d for d in ds)
        )
    elif table == "2":
        title = "Table 2: image classification (partial training: last stage; full training)"
    else:
        title = "Table 5: image classification, full training"
    show = table != "7"  # Table 7 prints neither a Model nor an R column
    return Table(f"table{table}", title, columns, rows, show, show, notes)


def build_segmentation(inp: _Inputs, datasets: Sequence[str] | None) -> Table:
    """Table 3: Method, R, MFLOPs, mIoU per dataset, for partial and full training."""
    ds = list(datasets or SEG_DATASETS)
    columns = [Column("mflops", "MFLOPs"), *_dataset_columns(ds)]
    rows = _rows("3", inp, columns, scopes=["partial", "full"], datasets=ds)
    title = "Table 3: semantic segmentation ({models}, mIoU [%])"
    return _one_model_table("table3", title, "segformer-mit-b0", columns, rows, inp)


def _table4_rank(key: tuple, paper: dict) -> str:
    """Table 4 prints the number of bases of each selection (its Rank column)."""
    return str(paper["rank"]) if paper and paper.get("rank") is not None else rank_cell(key)


def build_table4(inp: _Inputs, datasets: Sequence[str] | None) -> Table:
    """Table 4: base selections (LP_L1, LP_Linf, LHE) at about the same rank."""
    ds = list(datasets or ["cifar100", "cifar10"])
    columns = _dataset_columns(ds)
    rows = _rows(
        "4",
        inp,
        columns,
        scopes=["partial"],
        datasets=ds,
        rank=_table4_rank,
        keep=lambda key: method_spec(key[0]).bases_only,
    )
    title = "Table 4: base selection for {models} (partial training), accuracy [%]"
    return _one_model_table("table4", title, "efficientformer-l1", columns, rows, inp)


def build_table6(inp: _Inputs, datasets: Sequence[str] | None) -> Table:
    """Table 6: LBP-WHT + LoRA-all with GFLOPs per batch and activation / gradient memory."""
    ds = list(datasets or ["cifar100", "cifar10"])
    columns = [
        Column("gflops", "GFLOPs", "{:.0f}"),
        Column("activation_mb", "Activation [MB]", "{:.0f}"),
        Column("gradient_mb", "Gradient [MB]", "{:.0f}"),
        *_dataset_columns(ds),
    ]
    rows = _rows("6", inp, columns, scopes=["partial"], datasets=ds)
    title = "Table 6: LBP-WHT combined with LoRA-all, {models} partial training"
    table = _one_model_table("table6", title, "efficientformer-l1", columns, rows, inp)
    table.show_rank = False
    return table


# --------------------------------------------------------------------------------- Table 8
LAT_ALIASES = {
    "latency": ("latency_us", "median_us", "ours_latency_us", "latency_median_us", "time_us"),
    "speedup": ("speedup", "ours_speedup", "speedup_ours"),
}


def load_latency(latency_dir: Path | None) -> dict[str, pd.DataFrame]:
    """``{"cpu": df, "gpu": df}`` from ``table8_<device>.csv`` (``tools/benchmark_latency.py``).

    Raises:
        ValueError: a CSV that is not a benchmark table (no ``cx``, ``cy``, ``method``); the
            message names the file.
    """
    out: dict[str, pd.DataFrame] = {}
    if latency_dir is None or not Path(latency_dir).exists():
        return out
    for path in sorted(Path(latency_dir).glob("table8_*.csv")):
        dev = path.stem.split("_", 1)[1].lower()
        dev = "gpu" if dev.startswith(("cuda", "gpu")) else "cpu" if dev.startswith("cpu") else dev
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable CSV ({e})") from e
        # Lower-case the names for lookup, except where two only differ in case: the benchmark
        # writes both r (LP_L1 radius) and R (number of bases).
        lower = [c.lower() for c in df.columns]
        df.columns = [c.lower() if lower.count(c.lower()) == 1 else c for c in df.columns]
        missing = {"cx", "cy", "method"} - set(df.columns)
        if missing:
            raise ValueError(
                f"{path}: not a Table 8 benchmark CSV (no column {sorted(missing)}); "
                "it is written by tools/benchmark_latency.py"
            )
        if "batch" in df.columns and (df["batch"] == 1).any():
            df = df[df["batch"] == 1]  # the paper's setting
        out.setdefault(dev, df)
    return out


def _lat_lookup(df: pd.DataFrame | None, cx: int, cy: int, length: int, key: tuple) -> dict:
    res: dict[str, float | None] = {"latency": None, "speedup": None}
    if df is None or df.empty:
        return res
    cols = set(df.columns)
    lcol = "l" if "l" in cols else "tokens" if "tokens" in cols else None
    sel = df[(df["cx"] == cx) & (df["cy"] == cy)]
    if lcol:
        sel = sel[sel[lcol] == length]
    method = key[0]
    reference = method_spec(method).reference
    sel = sel[sel["method"].astype(str) == method]
    if not reference and "r" in cols:
        sel = sel[sel["r"] == key[2]]
    if sel.empty:
        return res
    row = sel.iloc[0]
    for k, aliases in LAT_ALIASES.items():
        c = next((a for a in aliases if a in cols), None)
        res[k] = as_number(row[c]) if c else None
    if reference:
        res["speedup"] = None  # the paper prints "-" for the baseline
    return res


def build_table8(paper_dir: Path, latency_dir: Path | None) -> Table:
    lat = load_latency(latency_dir)
    columns = [
        Column("speedup_cpu", "Speedup CPU", "{:.1f}", "×"),
        Column("speedup_gpu", "Speedup GPU", "{:.1f}", "×"),
        Column("latency_cpu_us", "Latency CPU [µs]"),
        Column("latency_gpu_us", "Latency GPU [µs]"),
    ]
    rows = []
    with open(Path(paper_dir) / "table8.csv", newline="") as f:
        for p in csv.DictReader(f):
            key = method_key(p["method"], p.get("select") or None, p.get("r"), p.get("rank"))
            cx, cy, length = int(p["cx"]), int(p["cy"]), int(p["L"])
            row = Row(f"({cx},{cy},{length})", p["model"], key, rank_cell(key))
            for dev in ("cpu", "gpu"):
                got = _lat_lookup(lat.get(dev), cx, cy, length, key)
                row.ours[f"speedup_{dev}"] = Stat(got["speedup"], None, 1 if got["speedup"] else 0)
                row.ours[f"latency_{dev}_us"] = Stat(
                    got["latency"], None, 1 if got["latency"] else 0
                )
            for c in columns:
                row.paper[c.name] = as_number(p.get(c.name))
            rows.append(row)
    notes = [
        "Ours: tools/benchmark_latency.py, batch 1, on this project's machine "
        "(results/latency/table8_<device>.csv); the paper measured a Jetson Nano."
    ]
    title = "Table 8: latency of BP through the last two linear layers of EfficientFormer-L1/L7"
    return Table("table8", title, columns, rows, notes=notes, lead=[("(Cx, Cy, L)", "section")])


# ------------------------------------------------------------------------------- rendering
def _num(v: float, col: Column) -> str:
    """``v`` in the column's format; a non-zero value the format would print as zero (the
    head-only row's MFLOPs) gets two significant digits instead."""
    text = col.fmt.format(v)
    return f"{v:.2g}" if v and not any(ch in "123456789" for ch in text) else text


def _ours(s: Stat, col: Column) -> str:
    if s.text is not None or s.mean is None:
        return s.text or ""
    std = "" if s.std is None else f" ± {_num(s.std, col)}"
    return f"{_num(s.mean, col)}{std}{col.suffix}"


def to_frame(t: Table) -> pd.DataFrame:
    """Machine-readable CSV: one row per table row; per metric ours, _std, _n and _paper."""
    recs = []
    for row in t.rows:
        method, select, r = row.key
        rec: dict[str, Any] = dict(section=row.section, model=row.model, method=method,
                                   select=select, r=r, R=row.rank, label=method_label(row.key),
                                   extra=row.extra)  # fmt: skip
        for col in t.columns:
            s = row.ours.get(col.name, Stat())
            rec |= {col.name: s.mean, f"{col.name}_std": s.std, f"{col.name}_n": s.n}
            rec[f"{col.name}_paper"] = row.paper.get(col.name)
        recs.append(rec)
    return pd.DataFrame(recs)


def _grid(t: Table, latex: bool) -> tuple[list[str], list[list[str]], list[bool], list[bool]]:
    """The lead headers; every row's cells (lead cells, then ours / paper per column); per row
    whether it opens a new (section, model) group (the lead and model cells are printed there
    only); per row whether a section line goes before it (tables without a lead column)."""
    heads = [x for x, _ in t.lead] + ["Model"] * t.show_model + ["Method"]
    heads += ["Rank" if t.name == "table4" else "R"] * t.show_rank
    cells, new, section = [], [], []
    for i, row in enumerate(t.rows):
        prev = t.rows[i - 1] if i else None
        new.append(prev is None or (prev.section, prev.model) != (row.section, row.model))
        section.append(
            bool(row.section) and not t.lead and (not prev or prev.section != row.section)
        )
        lead = [row.section if new[-1] else ""] * bool(t.lead)
        lead += [MODEL_NAMES.get(row.model, row.model) if new[-1] else ""] * t.show_model
        lead += [method_label(row.key, latex) + (" (extra)" if row.extra else "")]
        lead += [row.rank] * t.show_rank
        for c in t.columns:
            paper = row.paper.get(c.name)
            lead += [_ours(row.ours.get(c.name, Stat()), c)]
            lead += ["" if paper is None else _num(paper, c) + c.suffix]
        cells.append(lead)
    return heads, cells, new, section


def to_markdown(t: Table) -> str:
    """The table in Markdown (template ``paper_table.md.j2``): title, what the cells hold, one
    line per row (a bold line per section), the notes."""
    lead, cells, _, sections = _grid(t, latex=False)
    heads = lead + [x for c in t.columns for x in (c.header, f"{c.header} (paper)")]
    align = ["---"] * len(lead) + ["---:"] * (2 * len(t.columns))
    lines = markdown_table(heads, cells, align).split("\n")
    for i in reversed([i for i, new in enumerate(sections) if new]):
        lines.insert(2 + i, f"| **{t.rows[i].section}** |" + " |" * (len(heads) - 1))
    return render("paper_table.md.j2", title=t.title, lines=lines, notes=t.notes)


_TEX_ESC = {"&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "×": r"$\times$", "±": r"$\pm$",
            "µ": r"$\mu$"}  # fmt: skip


def _tex(s: str) -> str:
    return s if "$" in s else "".join(_TEX_ESC.get(ch, ch) for ch in s)  # "$": already LaTeX


def to_latex(t: Table) -> str:
    """The table as a LaTeX ``tabular`` (pandas ``DataFrame.to_latex``, booktabs rules): our
    and the paper's value under each metric's header, a rule between models and an italic
    line per section."""
    lead, cells, groups, sections = _grid(t, latex=True)
    n = len(lead) + 2 * len(t.columns)
    columns = pd.MultiIndex.from_tuples(
        [(_tex(h), "") for h in lead]
        + [(_tex(c.header), side) for c in t.columns for side in ("ours", "paper")]
    )
    frame = pd.DataFrame([[_tex(c) for c in row] for row in cells], columns=columns)
    fmt = "l" * len(lead) + "rr" * len(t.columns)
    lines = frame.to_latex(index=False, column_format=fmt, multicolumn_format="c").splitlines()
    first = len(lead) + 1
    rules = [
        rf"\cmidrule(lr){{{first + 2 * i}-{first + 2 * i + 1}}}" for i in range(len(t.columns))
    ]
    lines.insert(3, " ".join(rules))  # under the metric headers
    body = []
    for i, line in enumerate(lines[6 : 6 + len(cells)]):
        body += [r"\midrule"] * (i > 0 and groups[i])
        if sections[i]:
            body.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{_tex(t.rows[i].section)}}}}} \\")
        body.append(line)
    lines[6 : 6 + len(cells)] = body
    title = f"% {t.title}. Generated by tools/make_tables.py; ours (mean $\\pm$ std) and paper."
    return "\n".join([title, *lines]) + "\n"


def write_table(t: Table, out_dir: Path) -> list[Path]:
    """``<out_dir>/<name>/<name>.{md,csv,tex}``, each written aside and renamed."""
    d = Path(out_dir) / t.name
    paths = [d / f"{t.name}.md", d / f"{t.name}.csv", d / f"{t.name}.tex"]
    atomic_write(paths[0], to_markdown(t))
    atomic_write(paths[1], lambda tmp: to_frame(t).to_csv(tmp, index=False))
    atomic_write(paths[2], to_latex(t))
    return paths


# ------------------------------------------------------------ transfer and gradient fidelity
def transfer_rows(
    records: Sequence[dict], costs: Sequence[dict], order: Sequence[str]
) -> list[dict[str, Any]]:
    """The transfer table (``results/transfer/``): one row per method tag (in ``order``) with
    label, BatchNorm mode, R, backprop MFLOPs, speedup, saved MB, trainable parameters, accuracy
    mean / std / n over the runs, mean train seconds.

    Raises:
        RecordValueError: a run's accuracy or train seconds that is not a finite number (the
            message names the run as ``runs/<tag>_s<seed>.json`` and the key).
    """
    cost = {c["tag"]: c for c in costs}
    full = cost.get("full-bp", {}).get("mflops")
    out = []
    for tag in order:
        recs = [r for r in records if r["tag"] == tag]
        if not recs:
            continue
        r0, c = recs[0], cost.get(tag, {})

        def values(key: str, recs: list[dict] = recs) -> pd.Series:
            return pd.Series(
                [checked_number(r[key], f"runs/{r['tag']}_s{r['seed']}.json", key) for r in recs]
            )

        acc = values("accuracy")
        r = None if r0.get("r") is None or pd.isna(r0["r"]) else int(r0["r"])
        rank = rank_of((r0["method"], "lp_l1" if r else None, r))
        out.append(
            dict(
                tag=tag,
                method=r0["label"],
                bn="running stats" if r0["norm_eval"] else "train mode",
                R="-" if rank is None or method_spec(r0["method"]).reference else rank,
                mflops=c.get("mflops"),
                speedup=(full / c["mflops"]) if full and c.get("mflops") else None,
                activation_mb=c.get("activation_mb"),
                trainable_params=c.get("trainable_params"),
                acc=float(acc.mean()),
                acc_std=float(acc.std(ddof=1)) if len(acc) > 1 else None,
                n=len(acc),
                train_s=float(values("train_s").mean()),
            )
        )
    return out


def transfer_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The transfer table in Markdown (without a title)."""

    def num(v: Any, spec: str) -> str:
        return "" if v is None else format(v, spec)

    header = ["Method", "BatchNorm", "R", "Backprop MFLOPs", "Speedup", "Saved act. MB",
              "Trainable params", "Accuracy [%]", "Train s / run"]  # fmt: skip
    cells = [
        [
            r["method"],
            r["bn"],
            r["R"],
            num(r["mflops"], ".2f"),
            "" if r["speedup"] is None else f"{r['speedup']:.1f}×",
            num(r["activation_mb"], ".3f"),
            num(r["trainable_params"], ","),
            f"{r['acc']:.2f}{num(r['acc_std'], '.2f') and ' ± ' + num(r['acc_std'], '.2f')} (n={r['n']})",
            f"{r['train_s']:.0f}",
        ]  # fmt: skip
        for r in rows
    ]
    return markdown_table(header, cells, ["---", "---"] + ["---:"] * 7)


#: Metrics of a gradient-fidelity row averaged over layers (:func:`fidelity_summary`).
FIDELITY_METRICS = ("cos_gw", "relerr_gw", "cos_gx", "relerr_gx", "energy_share")


def fidelity_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Gradient-fidelity rows (:func:`lbp_wht.integrations.fidelity.analyze_config`): the mean
    over layers per (state, selection, padding), with the number of layers."""
    keys = ["state", "selection", "family", "param", "num_bases", "padding"]
    g = df.groupby(keys, sort=False)
    s = g[list(FIDELITY_METRICS)].mean().reset_index()
    s["layers"] = g.size().values
    return s


def write_fidelity_csvs(rows: Sequence[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """``out/fidelity.csv`` (every row, floats to 6 decimals) and ``out/summary.csv``
    (:func:`fidelity_summary`)."""
    from ..fidelity import FIELDS

    full, path = out / "fidelity.csv", out / "summary.csv"
    extra = sorted({k for row in rows for k in row} - {"state", *FIELDS})
    if extra:  # a column the CSV would drop is a caller's bug, not data to lose quietly
        raise ValueError(f"fidelity rows carry unknown columns {extra}; expected state + {FIELDS}")
    write_rows_csv(full, rows, ["state", *FIELDS], "{:.6f}")
    summary = fidelity_summary(pd.DataFrame(rows, columns=["state", *FIELDS]))
    atomic_write(path, lambda tmp: summary.to_csv(tmp, index=False, float_format="%.6f"))
    return full, path


def build_table(
    table: str,
    *,
    runs: pd.DataFrame,
    cost: pd.DataFrame,
    paper_dir: Path,
    latency_dir: Path | None = None,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    extra_rows: bool = False,
) -> Table:
    """Table ``table`` ("2" ... "8") from loaded runs / costs (see the module docstring).

    ``datasets`` may use any known spelling (``stanford-cars`` or ``cars``).

    Raises:
        ValueError: an unknown table, model or dataset (the message lists the known ones).
    """
    table = str(table).removeprefix("table")
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose from {TABLES}")
    check_models(models)
    datasets = check_datasets(datasets)
    inp = _Inputs(Path(paper_dir), runs, cost, models, extra_rows)
    if table in ("2", "5", "7"):
        return build_classification(table, inp, datasets)
    if table == "8":
        return build_table8(Path(paper_dir), latency_dir)
    return {"3": build_segmentation, "4": build_table4, "6": build_table6}[table](inp, datasets)


def check_datasets(datasets: Sequence[str] | None) -> list[str] | None:
    """``datasets`` spelt as the paper's tables spell them (:func:`norm_dataset`).

    Raises:
        ValueError: a name that is no known dataset (so a typo cannot give empty columns).
    """
    if not datasets:
        return None
    names = [norm_dataset(d) for d in datasets]
    unknown = [d for d, n in zip(datasets, names) if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; known datasets: {', '.join(DATASETS)}")
    return names


def check_models(models: Sequence[str] | None) -> None:
    """Raises ``ValueError`` naming any of ``models`` that is no preset model."""
    unknown = [m for m in models or [] if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known models: {', '.join(MODEL_NAMES)}")


def make_tables(
    *,
    runs: pd.DataFrame,
    cost: pd.DataFrame,
    paper_dir: str | os.PathLike,
    out: str | os.PathLike,
    tables: Sequence[str] = TABLES,
    latency_dir: str | os.PathLike | None = None,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    extra_rows: bool = False,
) -> list[tuple[Table, list[Path]]]:
    """Build and write each of ``tables`` from the loaded records (:func:`load_runs`,
    :func:`load_cost`); returns every table with the paths written (see :func:`build_table`
    for the arguments and errors)."""
    done = []
    for table in tables:
        t = build_table(
            table,
            runs=runs,
            cost=cost,
            paper_dir=Path(paper_dir),
            latency_dir=Path(latency_dir) if latency_dir else None,
            models=models,
            datasets=datasets,
            extra_rows=extra_rows,
        )
        done.append((t, write_table(t, Path(out))))
    return done
