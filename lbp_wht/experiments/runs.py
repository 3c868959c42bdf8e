"""Training runs of the paper's tables, or of a grid over one config, as sweep :class:`Run` s.

Every run trains with ``tools/train.py CONFIG --work-dir WORK_ROOT/<run id> --seed S
[--cfg-options ...]`` and writes ``WORK_ROOT/<run id>/record.json``. A table run's id names its
cell (``<model>_<scope>_<method tag>_<dataset>_s<seed>``, :meth:`Cell.run_id`), so a run that
several tables share (e.g. EfficientFormer-L1 LP_L1-4 on CIFAR-100: Tables 2 and 4, Figure 3)
runs once. A grid run's id is ``<name>_<key>=<value>..._s<seed>``.

Listing runs reads config files as text only (no mmengine import), so a dry run is instant;
validating grid keys (:func:`check_option_keys`) and the config digest a run will record
(:func:`expected_digest`) parse configs with mmengine.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..runs.sweep import Run, safe_id
from .catalog import CONFIGS_DIR, PAPER_DIR, REPO_ROOT, Cell, resolve_config, table_cells
from .vocab import norm_dataset

__all__ = [
    "TRAIN_TOOL",
    "CLS_EPOCHS",
    "SweepSpecError",
    "table_runs",
    "grid_runs",
    "parse_axes",
    "check_option_keys",
    "location_options",
    "config_value",
    "expected_digest",
]

TRAIN_TOOL = REPO_ROOT / "tools" / "train.py"
#: Epochs of the classification schedule (for the progress bar of epoch-based runs).
CLS_EPOCHS = 50


class SweepSpecError(ValueError):
    """A sweep's specification is wrong (unknown key, empty axis, unknown table / model /
    dataset); the message names the offending item and what to do."""


_ASSIGN = re.compile(r"^(data_root|load_from)\s*=\s*['\"]([^'\"]*)['\"]", re.M)


def config_value(config: Path, key: str) -> str | None:
    """The string value of ``key = '...'`` (``data_root`` or ``load_from``) in ``config`` or
    the ``_base_`` files it lists (the config's own assignment wins, then the last base), read
    as text."""
    text = config.read_text()
    found = None
    bases = re.search(r"_base_\s*=\s*\[(.*?)\]", text, re.S)
    if bases:
        for b in re.findall(r"['\"]([^'\"]+)['\"]", bases.group(1)):
            p = (config.parent / b).resolve()
            if p.exists():
                v = config_value(p, key)
                found = v if v is not None else found
    for k, v in _ASSIGN.findall(text):
        if k == key:
            found = v
    return found


def location_options(config: Path, cell: Cell, data_root: str, ckpt_dir: str) -> list[str]:
    """``--cfg-options`` that move the config's ``data/...`` and ``checkpoints/...`` paths to
    ``data_root`` / ``ckpt_dir`` (nothing when those are the defaults)."""
    opts: list[str] = []
    data_root, ckpt_dir = data_root.rstrip("/"), ckpt_dir.rstrip("/")
    if data_root != "data":
        rel = config_value(config, "data_root")
        if rel and rel.startswith("data/"):
            new = f"{data_root}/{rel[len('data/') :]}"
            if cell.dataset == "voc12aug":  # train = ConcatDataset(train, aug)
                keys = [
                    "train_dataloader.dataset.datasets.0.data_root",
                    "train_dataloader.dataset.datasets.1.data_root",
                ]
            else:
                keys = ["train_dataloader.dataset.data_root"]
            keys += ["val_dataloader.dataset.data_root", "test_dataloader.dataset.data_root"]
            opts += [f"{k}={new}" for k in keys]
    if ckpt_dir != "checkpoints":
        ckpt = config_value(config, "load_from")
        if ckpt and ckpt.startswith("checkpoints/"):
            opts.append(f"load_from={ckpt_dir}/{ckpt[len('checkpoints/') :]}")
    return opts


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def _train_command(python: str, config: str, work_dir: Path, seed: int, opts: Sequence[str]):
    cmd = [python, str(TRAIN_TOOL), config, "--work-dir", str(work_dir), "--seed", str(seed)]
    return cmd + (["--cfg-options", *opts] if opts else [])


def _filter_for(table: str, wanted: Sequence[str] | None, paper_dir, what: str):
    """Apply a MODELS / DATASETS filter only where the table has any of them (so that e.g.
    ``MODELS=efficientformer-l1`` works across Tables 2-7 and the figures)."""
    if not wanted:
        return None
    have = {getattr(c, what[:-1]) for c in table_cells(table, paper_dir)}
    keep = [w for w in wanted if (norm_dataset(w) if what == "datasets" else w) in have]
    if not keep:
        raise SweepSpecError(
            f"table {table}: none of the {what} {list(wanted)} is in it (it has {sorted(have)})"
        )
    return keep


def table_runs(
    tables: Sequence[str],
    *,
    seeds: Sequence[int],
    work_root: str | os.PathLike,
    configs: str | os.PathLike = CONFIGS_DIR,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    data_root: str = "data",
    ckpt_dir: str = "checkpoints",
    python: str = sys.executable,
    extra_options: Sequence[str] = (),
    paper_dir: str | os.PathLike = PAPER_DIR,
) -> list[Run]:
    """The runs of paper tables (``"2"`` ... ``"7"``, ``"fig3"``, ``"fig5"``, ``"figures"`` =
    both figures): the union over ``tables``, each run once, in table order.

    ``meta`` of each run holds the cell (table, model, scope, method, select, r, rank,
    dataset), the seed, ``config`` / ``cfg_options`` (what :func:`expected_digest` needs) and
    ``max_epochs`` (progress display).
    """
    runs: list[Run] = []
    seen: set[str] = set()
    # Absolute: the runs execute in the repository root, wherever the sweep was started.
    configs, work_root = Path(configs).resolve(), Path(work_root).resolve()
    for table in tables:
        parts = ("fig3", "fig5") if table == "figures" else (table,)
        for part in parts:
            try:
                cells = table_cells(
                    part,
                    paper_dir,
                    models=_filter_for(part, models, paper_dir, "models"),
                    datasets=_filter_for(part, datasets, paper_dir, "datasets"),
                )
            except SweepSpecError:
                raise
            except ValueError as err:
                raise SweepSpecError(str(err)) from None
            for cell in cells:
                for seed in seeds:
                    rid = cell.run_id(seed)
                    if rid in seen:
                        continue
                    seen.add(rid)
                    config, opts = resolve_config(cell, configs)
                    opts = opts + location_options(config, cell, data_root, ckpt_dir)
                    opts += list(extra_options)
                    wd = work_root / rid
                    meta = dict(
                        table=part,
                        model=cell.model,
                        scope=cell.scope,
                        method=cell.method,
                        select=cell.select,
                        r=cell.r,
                        rank=cell.rank,
                        dataset=cell.dataset,
                        seed=seed,
                        max_epochs=CLS_EPOCHS if cell.task == "cls" else None,
                        config=str(config),
                        cfg_options=tuple(opts),
                    )
                    cmd = _train_command(python, _rel(config), wd, seed, opts)
                    runs.append(Run(rid, tuple(cmd), wd, meta, cwd=str(REPO_ROOT)))
    return runs


def parse_axes(assignments: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["lbp.r=2,3", "lbp.select=lp_l1"]`` -> ``[("lbp.r", ["2", "3"]), ...]``.

    Raises:
        SweepSpecError: an assignment without ``=``, an empty key, an axis without values
            (``lbp.r=``) or a key given twice; the message names it.
    """
    axes: list[tuple[str, list[str]]] = []
    for a in assignments:
        key, sep, vals = a.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepSpecError(f"--set {a!r}: expected KEY=VALUE1,VALUE2,... (e.g. lbp.r=2,4)")
        values = [v.strip() for v in vals.split(",") if v.strip() != ""]  # "4, 6": 4 and 6
        if not values:
            raise SweepSpecError(
                f"--set {a!r}: the axis {key} has no values; give at least one (e.g. {key}=4)"
            )
        if any(k == key for k, _ in axes):
            raise SweepSpecError(f"--set: the axis {key} is given twice; merge its values")
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise SweepSpecError(f"--set {a!r}: the axis {key} gives {twice[0]} twice")
        axes.append((key, values))
    return axes


@lru_cache(maxsize=64)
def _effective(config: str) -> dict[str, Any]:
    from lbp_wht.integrations.launch import load_config  # ConfigFileError naming the file

    return load_config(config).to_dict()


def check_option_keys(config: str | os.PathLike, keys: Sequence[str], *, what: str) -> None:
    """Check that each dotted ``key`` names something that exists in ``config``'s effective
    config, or a key of the typed ``lbp`` block (``lbp.<key>`` of
    :data:`lbp_wht.integrations.build.LBP_DEFAULTS`, set or not).

    Raises:
        SweepSpecError: naming the unknown key, the config, and the keys that exist there.
        ConfigFileError: the config does not load (syntax error, missing ``_base_``).
    """
    from lbp_wht.integrations.build import LBP_DEFAULTS

    cfg = _effective(str(config))
    for key in keys:
        parts = key.split(".")
        if parts[:2] == ["lbp", "options"] and len(parts) == 3:  # a successor method's option
            from lbp_wht.conversion import SUCCESSOR_OPTIONS
            from lbp_wht.integrations.build import _ADAPTER_KEYS  # given as lbp.lora_*

            valid = sorted({k for _, names in SUCCESSOR_OPTIONS.values() for k in names})
            valid = [k for k in valid if k not in _ADAPTER_KEYS]
            if parts[2] not in valid:
                raise SweepSpecError(
                    f"{what} {key}: {parts[2]!r} is not an option of a successor method; "
                    f"their keys: {valid}"
                )
            continue
        if parts[0] == "lbp" and len(parts) == 2:
            if parts[1] not in LBP_DEFAULTS:
                raise SweepSpecError(
                    f"{what} {key}: {parts[1]!r} is not a key of the lbp block; "
                    f"its keys: {sorted(LBP_DEFAULTS)}"
                )
            continue
        node: Any = cfg
        for i, part in enumerate(parts):
            here = ".".join(parts[:i]) or "the top level"
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                have = sorted(node) if isinstance(node, dict) else f"a {type(node).__name__}"
                raise SweepSpecError(
                    f"{what} {key}: {part!r} is not a key of {here} in {config} "
                    f"(there: {have}); check the spelling"
                )


def grid_runs(
    config: str | os.PathLike,
    assignments: Sequence[str],
    *,
    seeds: Sequence[int],
    work_root: str | os.PathLike,
    name: str | None = None,
    python: str = sys.executable,
    extra_options: Sequence[str] = (),
    check_keys: bool = True,
) -> list[Run]:
    """Runs of ``config`` for every combination of ``--set key=v1,v2,...`` and seed.

    Raises:
        SweepSpecError: the config is missing, or an axis / extra option is malformed, empty
            or names a key the config does not have (``check_keys``).
    """
    axes = parse_axes(assignments)
    if not Path(config).is_file():
        raise SweepSpecError(f"config {config} not found")
    extra_keys = [o.partition("=")[0].strip() for o in extra_options]
    both = [k for k, _ in axes if k in extra_keys]
    if both:  # the later --cfg-options would win, and the run id would name the axis value
        raise SweepSpecError(
            f"{both[0]} is both a --set axis and a --cfg-options key; give it in one of them"
        )
    if check_keys:
        check_option_keys(config, [k for k, _ in axes], what="--set")
        check_option_keys(config, extra_keys, what="--cfg-options")
    combos = list(itertools.product(*[[(k, v) for v in vals] for k, vals in axes]))
    if check_keys and isinstance(_effective(str(config)).get("lbp"), dict):  # an LBP config
        _check_lbp_blocks(config, combos, extra_options)
    stem = name or Path(config).stem
    rel = _rel(Path(config))
    work_root = Path(work_root).resolve()
    runs = []
    for combo in combos:
        for seed in seeds:
            tag = "_".join(f"{_tag(k)}={v}" for k, v in combo)
            rid = safe_id(f"{stem}_{tag}_s{seed}" if tag else f"{stem}_s{seed}")
            wd = work_root / rid
            opts = [f"{k}={v}" for k, v in combo] + list(extra_options)
            meta = dict(seed=seed, **dict(combo), config=str(config), cfg_options=tuple(opts))
            cmd = _train_command(python, rel, wd, seed, opts)
            runs.append(Run(rid, tuple(cmd), wd, meta, cwd=str(REPO_ROOT)))
    return runs


def _tag(key: str) -> str:
    """A grid axis in a run id: its last part (``lbp.r`` -> ``r``); a successor's option keeps
    ``options.`` (``lbp.options.rank`` -> ``options.rank``, not ``lbp.rank``'s ``rank``)."""
    return key[len("lbp.") :] if key.startswith("lbp.options.") else key.split(".")[-1]


def _merged(config: str | os.PathLike, opts: Sequence[str]) -> Any:
    """``config``'s effective config with ``opts`` merged as ``tools/train.py --cfg-options``
    merges them (values parsed the same way)."""
    import argparse

    from mmengine.config import Config, DictAction

    cfg = Config(copy.deepcopy(_effective(str(config))))
    if opts:
        parser = argparse.ArgumentParser()
        parser.add_argument("--cfg-options", nargs="+", action=DictAction)
        cfg.merge_from_dict(parser.parse_args(["--cfg-options", *opts]).cfg_options)
    return cfg


def _check_lbp_blocks(config, combos, extra_options: Sequence[str]) -> None:
    """Parse the ``lbp`` block of every grid combination before anything starts, so that a
    value the block refuses (``lbp.r`` beyond ``order``, an option the method does not take)
    is one error naming the combination, not a failure of each of its runs."""
    from lbp_wht.integrations.build import LBPConfigError, validate_lbp_cfg

    for combo in combos:
        opts = [f"{k}={v}" for k, v in combo] + list(extra_options)
        if not any(o.startswith("lbp.") for o in opts):
            continue
        try:
            validate_lbp_cfg(_merged(config, opts).get("lbp"))
        except LBPConfigError as err:
            where = " ".join(o for o in opts if o.startswith("lbp."))
            raise SweepSpecError(f"--set {where}: {err}") from None


def expected_digest(run: Run) -> str | None:
    """The ``config_digest`` that ``run`` records when it trains now: the config of
    ``run.meta["config"]`` with ``run.meta["cfg_options"]`` merged (parsed as
    ``tools/train.py --cfg-options`` parses them) and ``randomness.seed`` set to the run's
    seed. None if the run's meta lacks the config, or the config cannot be parsed (the run
    itself will then fail and say why)."""
    from lbp_wht.runs.records import config_digest

    config = run.meta.get("config")
    if not config:
        return None
    try:
        cfg = _merged(config, list(run.meta.get("cfg_options") or ()))
    except Exception:  # noqa: BLE001 - the run reports the config's error itself
        return None
    seed = run.meta.get("seed")
    if seed is not None:
        cfg.randomness = dict(cfg.get("randomness") or {}, seed=int(seed))
    return config_digest(cfg.to_dict())
