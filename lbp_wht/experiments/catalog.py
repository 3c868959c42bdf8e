"""The paper's table catalogue: which training runs make up each table, and their configs.

Standard library only. The rows of Tables 2-7 are read from the typed paper reference
(``results/paper/*.csv``: one CSV row per printed table row, rows whose cells are unreadable
included), so a table's sweep has exactly the paper's rows. Each row is trained on each of
the table's datasets (:data:`TABLE_DATASETS`), once per seed; one (row, dataset) pair is a
:class:`Cell`. Figures 3/4 sweep LP_L1-r over r = 2..8 on every partial-training
classification model (CIFAR-100) beside the Full BP / LoRA / LoRA-all points; Figure 5 is one
special run (:data:`FIG5_CELL`).

:func:`resolve_config` is the one resolver from a cell to the config file that trains it
(and the ``--cfg-options`` it needs on top): the sweep, the cost tables and the tests all
use it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runs.sweep import safe_id
from .vocab import (
    CLS_DATASETS,
    MODEL_SPECS,
    SEG_DATASETS,
    MethodKey,
    _int_or_none,
    config_dataset,
    config_name,
    config_tag,
    lbp_options,
    method_key,
    method_spec,
    method_tag,
    norm_dataset,
)

__all__ = [
    "REPO_ROOT",
    "CONFIGS_DIR",
    "PAPER_DIR",
    "TABLES",
    "TABLE_DATASETS",
    "TABLE_FILES",
    "TABLE_FOLDERS",
    "CONFIG_FOLDERS",
    "FIG3_RS",
    "FIG3_BASELINES",
    "FIG5_CELL",
    "Cell",
    "read_paper_rows",
    "table_cells",
    "resolve_config",
]

#: The repository checkout this package was imported from (configs/ and results/ live there).
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"
PAPER_DIR = REPO_ROOT / "results" / "paper"

#: Tables / figures with a catalogue entry (``fig3`` also holds Figure 4's runs).
TABLES: tuple[str, ...] = ("2", "3", "4", "5", "6", "7", "fig3", "fig5")
TABLE_DATASETS: dict[str, tuple[str, ...]] = {
    "2": CLS_DATASETS,
    "3": SEG_DATASETS,
    "4": ("cifar100", "cifar10"),
    "5": CLS_DATASETS,
    "6": ("cifar100", "cifar10"),
    "7": ("places365",),
    "fig3": ("cifar100",),
    "fig5": ("cifar100",),
}
#: The paper reference file of each table under ``results/paper/``.
TABLE_FILES: dict[str, str] = {
    "2": "classification.csv",
    "3": "segmentation.csv",
    "4": "table4.csv",
    "5": "classification.csv",
    "6": "table6.csv",
    "7": "classification.csv",
}
#: The folder under ``configs/`` that holds each table's generated configs.
TABLE_FOLDERS: dict[str, str] = {
    "2": "table2",
    "3": "table3",
    "4": "table4",
    "5": "table5",
    "6": "table6",
    "7": "table7",
    "fig5": "figure5",
}
#: Where a cell's generated config is looked for, in this order (the first hit wins).
CONFIG_FOLDERS: tuple[str, ...] = (
    "table2",
    "table5",
    "table3",
    "table4",
    "table6",
    "table7",
    "figure5",
)
#: Figure 3 / 4: LBP-WHT radii swept on every model (partial training, CIFAR-100). The paper
#: does not list them; its text discusses LP_L1-2 ... LP_L1-8 (Sec. 4.4), so r = 2..8.
FIG3_RS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
FIG3_BASELINES: tuple[str, ...] = ("full_bp", "lora", "lora_all")
#: Figure 5: the g_y spectrum of the last attention (Meta3D) block of EfficientFormer-L1,
#: recorded during partial training on CIFAR-100 (Sec. 4.5). A run of its own (variant
#: "spectrum", ``configs/figure5/``): LP_L1-15 keeps all 64 bases, i.e. exact backprop through
#: an LBP layer that records the spectrum of g_y (``<work_dir>/spectrum.json``).
FIG5_CELL: dict[str, Any] = dict(
    model="efficientformer-l1",
    scope="partial",
    method="lbp_wht",
    select="lp_l1",
    r=15,
    dataset="cifar100",
    variant="spectrum",
)


@dataclass(frozen=True)
class Cell:
    """One (row, dataset) of a paper table: one training run per seed.

    Attributes:
        model, scope, method, select, r, rank: the row (``select``/``r`` None for methods
            without WHT bases; ``rank`` the LHE rank, None otherwise).
        dataset: the paper's dataset name (``cars``, not ``stanford-cars``).
        task: ``"cls"`` (mmpretrain) or ``"seg"`` (mmseg).
        variant: a special run of the same method, e.g. ``"spectrum"`` (Figure 5).
    """

    model: str
    scope: str
    method: str
    select: str | None
    r: int | None
    rank: int | None
    dataset: str
    task: str = "cls"
    variant: str = ""

    @property
    def method_key(self) -> MethodKey:
        return method_key(self.method, self.select, self.r, self.rank)

    @property
    def key(self) -> tuple:
        return (self.model, self.scope, self.dataset) + self.method_key

    def run_id(self, seed: int) -> str:
        """``<model>_<scope>_<method tag>[_<variant>]_<dataset>_s<seed>`` (work dir name)."""
        var = f"_{self.variant}" if self.variant else ""
        tag = method_tag(self.method_key)
        return safe_id(f"{self.model}_{self.scope}_{tag}{var}_{self.dataset}_s{seed}")

    @property
    def config_tag(self) -> str:
        """The method part of this cell's config file name (``lp-l1-r4``, ``spectrum``)."""
        return config_tag(self.method_key, self.variant)

    @property
    def config_name(self) -> str:
        """File name of this cell's own generated config (it may not exist: see
        :func:`resolve_config`)."""
        return config_name(self.model, self.scope, self.method_key, self.dataset, self.variant)


def read_paper_rows(table: str, paper_dir: str | os.PathLike = PAPER_DIR) -> list[dict[str, Any]]:
    """The rows of paper Table ``table`` from ``results/paper``, in the paper's order, each a
    dict with model, scope, method, select, r, rank (normalised) plus the CSV's other columns
    as strings (the paper's values; ``""`` where the paper's cell is unreadable)."""
    table = str(table)
    if table not in TABLE_FILES:
        raise ValueError(f"no paper reference for table {table!r}; tables: {sorted(TABLE_FILES)}")
    path = Path(paper_dir) / TABLE_FILES[table]
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: it is the typed paper reference (results/paper/), restore it"
        )
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            if raw.get("table", table) != table:
                continue
            row: dict[str, Any] = dict(raw)
            if table == "4":  # Table 4's method column holds the base selection
                row["select"], row["method"] = raw["method"], "lbp_wht"
            row["model"] = raw.get("model") or "efficientformer-l1"
            row["scope"] = raw.get("scope") or "partial"
            row["r"] = _int_or_none(raw.get("r"))
            row["rank"] = _int_or_none(raw.get("rank"))
            row["select"] = row.get("select") or None
            if not method_spec(row["method"]).has_bases:
                row["select"] = None
            elif row["select"] is None:
                row["select"] = "lp_l1"
            rows.append(row)
    return rows


def _task(model: str) -> str:
    info = MODEL_SPECS.get(model)
    return info.task if info else "cls"


def _keep(table: str, cells: list[Cell], field: str, wanted: list[str]) -> list[Cell]:
    """The cells whose ``field`` is one of ``wanted``; a ValueError naming any wanted value
    the table does not have."""
    have = {getattr(c, field) for c in cells}
    unknown = set(wanted) - have
    if unknown:
        raise ValueError(
            f"table {table} has no {field}(s) {sorted(unknown)}; its {field}s: {sorted(have)}"
        )
    return [c for c in cells if getattr(c, field) in wanted]


def table_cells(
    table: str,
    paper_dir: str | os.PathLike = PAPER_DIR,
    *,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    fig3_rs: Sequence[int] = FIG3_RS,
) -> list[Cell]:
    """Every (row, dataset) cell of a paper table (``"2"`` ... ``"7"``, ``"fig3"``, ``"fig5"``),
    optionally restricted to some models / datasets, in the paper's row order."""
    table = str(table)
    cells: list[Cell] = []
    if table == "fig5":
        cells = [Cell(rank=None, **FIG5_CELL)]
    elif table == "fig3":
        seen_models = []
        for row in read_paper_rows("2", paper_dir):
            if row["scope"] == "partial" and row["model"] not in seen_models:
                seen_models.append(row["model"])
        for model in seen_models:
            for method in FIG3_BASELINES:
                cells.append(Cell(model, "partial", method, None, None, None, "cifar100"))
            for r in fig3_rs:
                cells.append(Cell(model, "partial", "lbp_wht", "lp_l1", int(r), None, "cifar100"))
    else:
        if table not in TABLE_FILES:
            raise ValueError(f"unknown table {table!r}; choose one of {list(TABLES)}")
        for row in read_paper_rows(table, paper_dir):
            for ds in TABLE_DATASETS[table]:
                cells.append(
                    Cell(
                        row["model"],
                        row["scope"],
                        row["method"],
                        row["select"],
                        row["r"],
                        row["rank"] if row["select"] == "lhe" else None,
                        ds,
                        _task(row["model"]),
                    )
                )
    if models:
        cells = _keep(table, cells, "model", list(models))
    if datasets:
        cells = _keep(table, cells, "dataset", [norm_dataset(d) for d in datasets])
    return cells


#: Configs that can stand in for a cell without one of its own, in order of preference
#: (their ``lbp`` block is then set on the command line).
_STAND_INS = ("lp-l1-r4", "full-bp", "lora-all", "lora")


def _find(configs: Path, name: str, folders: Sequence[str]) -> Path | None:
    for folder in folders:
        hits = sorted((configs / folder).rglob(name)) if (configs / folder).exists() else []
        if hits:
            return hits[0]
    return None


def resolve_config(
    cell: Cell, configs: str | os.PathLike = CONFIGS_DIR, *, table: str | None = None
) -> tuple[Path, list[str]]:
    """The config file that trains ``cell`` and the ``--cfg-options`` (``key=value``) it
    needs on top.

    The generated config of exactly this cell when there is one (looked for in ``table``'s
    folder first when given, then in :data:`CONFIG_FOLDERS` order); otherwise a generated
    config of the same model, scope and dataset (configs of one model / scope / dataset
    differ only in their ``lbp`` block) with ``lbp.method`` / ``lbp.select`` / ``lbp.r`` /
    ``lbp.rank`` set on the command line (e.g. Figure 3's LP_L1-3/5/7).

    Raises:
        FileNotFoundError: no config of that model / scope / dataset (names what was looked
            for and says to run ``tools/gen_configs.py``).
    """
    configs = Path(configs)
    folders = list(CONFIG_FOLDERS)
    if table is not None and TABLE_FOLDERS.get(str(table)) in folders:
        folders.remove(TABLE_FOLDERS[str(table)])
        folders.insert(0, TABLE_FOLDERS[str(table)])
    exact = _find(configs, cell.config_name, folders)
    if exact is not None:
        return exact, []
    ds = config_dataset(cell.dataset)
    stem = f"{cell.model}_{cell.scope}_"
    if cell.variant:
        raise FileNotFoundError(
            f"no config {cell.config_name} under {configs}; run tools/gen_configs.py"
        )
    for tag in _STAND_INS:
        base = _find(configs, f"{stem}{tag}_{ds}.py", folders)
        if base is not None:
            break
    else:
        raise FileNotFoundError(
            f"no config for {cell.model} / {cell.scope} / {ds} under {configs} "
            f"(looked for {stem}<method>_{ds}.py in {', '.join(folders)}); "
            "run tools/gen_configs.py"
        )
    return base, [f"lbp.{k}={v}" for k, v in lbp_options(cell.method_key).items()]
