"""Run the sweep behind a paper table (or any grid over a config), resumably.

    # the runs of paper Table 2 (partial + full training), one seed, 4 GPUs one run each:
    python tools/sweep.py table 2 --gpus 0 1 2 3 --seeds 0
    python tools/sweep.py table 2 --dry-run            # list the runs and their state
    python tools/sweep.py table 3 4 6 7 figures        # several tables; shared runs run once

    # a new sweep: any config, any --cfg-options grid, several seeds
    python tools/sweep.py grid configs/table2/efficientformer-l1/efficientformer-l1_partial_lp-l1-r4_cifar100.py \\
        --set lbp.r=2,3,4,5,6 --seeds 0 1 2 --name l1-rsweep

Every run trains with ``tools/train.py CONFIG --work-dir WORK_ROOT/<run id> --seed S`` and
writes ``WORK_ROOT/<run id>/record.json``. A run id names the experiment cell
(``<model>_<scope>_<method>_<dataset>_s<seed>``), so a run shared by several tables (e.g.
EfficientFormer-L1 LP_L1-4 on CIFAR-100: Table 2, Table 4, Figure 3) runs once. Re-running a
sweep skips complete runs and restarts interrupted ones; two sweeps at once never run the same
run (see ``lbp_wht/sweep.py``). Then build the tables with ``tools/make_tables.py --runs
WORK_ROOT`` (the ``scripts/reproduce_table*.sh`` scripts do both).

Settings (flags, or environment variables of the same name as the scripts use): ``SEEDS``,
``MODELS``, ``DATASETS``, ``WORK_ROOT`` (default ``work_dirs/paper``), ``DATA_ROOT`` (default
``data``: the configs' ``data/<dataset>`` paths are re-rooted there), ``CKPT_DIR`` (default
``checkpoints``: the configs' ``load_from`` file names are looked up there), ``GPUS`` (device
ids; one run per GPU at a time), ``JOBS`` (runs at a time without GPUS).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lbp_wht.sweep import (  # noqa: E402
    PAPER_TO_CONFIG_DATASET,
    Cell,
    Run,
    dry_run_listing,
    format_duration,
    method_key,
    norm_dataset,
    run_sweep,
    safe_id,
    table_cells,
)

TABLE_CHOICES = ("2", "3", "4", "5", "6", "7", "fig3", "fig5", "figures")
#: Where a cell's generated config is looked for first (tools/gen_configs.py folders).
CONFIG_FOLDERS = ("table2", "table5", "table3", "table4", "table6", "table7", "figure5")
#: Epochs of the classification schedule (for the progress bar of epoch-based runs).
CLS_EPOCHS = 50


def config_tag(cell: Cell) -> str:
    """The method part of a generated config's file name (tools/gen_configs.py)."""
    if cell.variant:
        return cell.variant
    method, select, r = method_key(cell.method, cell.select, cell.r, cell.rank)
    if method in ("full_bp", "lora", "lora_all"):
        return method.replace("_", "-")
    sel = select.replace("_", "-")
    tag = f"lhe-rank{r}" if select == "lhe" else f"{sel}-r{r}"
    return tag + ("+lora-all" if method == "lbp_wht+lora_all" else "")


def _find(configs: Path, name: str) -> Path | None:
    for folder in CONFIG_FOLDERS:
        hits = sorted((configs / folder).rglob(name)) if (configs / folder).exists() else []
        if hits:
            return hits[0]
    return None


def resolve_config(cell: Cell, configs: Path) -> tuple[Path, list[str]]:
    """The config of ``cell`` and the ``--cfg-options`` it needs on top.

    The generated config of exactly this cell when there is one; otherwise a generated config
    of the same model, scope and dataset (the method bases differ only in the ``lbp`` block),
    with ``lbp.method`` / ``lbp.select`` / ``lbp.r`` / ``lbp.rank`` set on the command line
    (e.g. Figure 3's LP_L1-3/5/7 or Table 5's EfficientFormer-L1 LP_L1-7).
    """
    ds = PAPER_TO_CONFIG_DATASET.get(cell.dataset, cell.dataset)
    stem = f"{cell.model}_{cell.scope}_"
    exact = _find(configs, f"{stem}{config_tag(cell)}_{ds}.py")
    if exact is not None:
        return exact, []
    if cell.variant:
        raise FileNotFoundError(
            f"no config {stem}{cell.variant}_{ds}.py under {configs}; run tools/gen_configs.py"
        )
    for tag in ("lp-l1-r4", "full-bp", "lora-all", "lora"):
        base = _find(configs, f"{stem}{tag}_{ds}.py")
        if base is not None:
            break
    else:
        raise FileNotFoundError(
            f"no config for {cell.model} / {cell.scope} / {ds} under {configs} "
            f"(looked for {stem}<method>_{ds}.py in {', '.join(CONFIG_FOLDERS)}); "
            "run tools/gen_configs.py"
        )
    method, select, r = method_key(cell.method, cell.select, cell.r, cell.rank)
    opts = [f"lbp.method={method}"]
    if select is not None:
        opts.append(f"lbp.select={select}")
        opts.append(f"lbp.rank={r}" if select == "lhe" else f"lbp.r={r}")
    return base, opts


_ASSIGN = re.compile(r"^(data_root|load_from)\s*=\s*['\"]([^'\"]*)['\"]", re.M)


def _base_value(config: Path, key: str) -> str | None:
    """The value of ``key = '...'`` in ``config`` or the ``_base_`` files it lists (last wins),
    read as text (no mmengine import: listing a sweep stays instant)."""
    text = config.read_text()
    found = None
    bases = re.search(r"_base_\s*=\s*\[(.*?)\]", text, re.S)
    if bases:
        for b in re.findall(r"['\"]([^'\"]+)['\"]", bases.group(1)):
            p = (config.parent / b).resolve()
            if p.exists():
                v = _base_value(p, key)
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
        rel = _base_value(config, "data_root")
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
        ckpt = _base_value(config, "load_from")
        if ckpt and ckpt.startswith("checkpoints/"):
            opts.append(f"load_from={ckpt_dir}/{ckpt[len('checkpoints/') :]}")
    return opts


def _cfg_opts(opts: Sequence[str]) -> list[str]:
    return ["--cfg-options", *opts] if opts else []


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def table_runs(
    tables: Sequence[str],
    *,
    seeds: Sequence[int],
    work_root: str | os.PathLike,
    configs: str | os.PathLike = ROOT / "configs",
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    data_root: str = "data",
    ckpt_dir: str = "checkpoints",
    python: str = sys.executable,
    extra_options: Sequence[str] = (),
    paper_dir: str | os.PathLike = ROOT / "results" / "paper",
) -> list[Run]:
    """The runs of paper tables (union over ``tables``, each run once), in table order."""
    runs: list[Run] = []
    seen: set[str] = set()
    # Absolute: the runs execute in the repository root, wherever the sweep was started.
    configs, work_root = Path(configs).resolve(), Path(work_root).resolve()
    for table in tables:
        parts = ("fig3", "fig5") if table == "figures" else (table,)
        for part in parts:
            cells = table_cells(
                part,
                paper_dir,
                models=_filter_for(part, models, paper_dir, "models"),
                datasets=_filter_for(part, datasets, paper_dir, "datasets"),
            )
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
                    cmd = [
                        python,
                        str(ROOT / "tools" / "train.py"),
                        _rel(config),
                        "--work-dir",
                        str(wd),
                        "--seed",
                        str(seed),
                        *_cfg_opts(opts),
                    ]
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
                    )
                    runs.append(Run(rid, tuple(cmd), wd, meta, cwd=str(ROOT)))
    return runs


def _filter_for(table: str, wanted: Sequence[str] | None, paper_dir, what: str):
    """Apply a MODELS / DATASETS filter only where the table has any of them (so that e.g.
    ``MODELS=efficientformer-l1`` works across Tables 2-7 and the figures)."""
    if not wanted:
        return None
    have = {getattr(c, what[:-1]) for c in table_cells(table, paper_dir)}
    keep = [w for w in wanted if (norm_dataset(w) if what == "datasets" else w) in have]
    if not keep:
        raise SystemExit(
            f"table {table}: none of the {what} {list(wanted)} is in it (it has {sorted(have)})"
        )
    return keep


def grid_runs(
    config: str,
    assignments: Sequence[str],
    *,
    seeds: Sequence[int],
    work_root: str | os.PathLike,
    name: str | None = None,
    python: str = sys.executable,
    extra_options: Sequence[str] = (),
) -> list[Run]:
    """Runs of ``config`` for every combination of ``--set key=v1,v2,...`` and seed."""
    axes: list[tuple[str, list[str]]] = []
    for a in assignments:
        if "=" not in a:
            raise SystemExit(f"--set {a!r}: expected key=value1,value2,...")
        k, vals = a.split("=", 1)
        axes.append((k, [v for v in vals.split(",") if v != ""]))
    stem = name or Path(config).stem
    if not Path(config).exists():
        raise SystemExit(f"config {config} not found")
    config = _rel(Path(config))
    work_root = Path(work_root).resolve()
    runs = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in axes]) or [()]:
        for seed in seeds:
            tag = "_".join(f"{k.split('.')[-1]}={v}" for k, v in combo)
            rid = safe_id(f"{stem}_{tag}_s{seed}" if tag else f"{stem}_s{seed}")
            wd = Path(work_root) / rid
            opts = [f"{k}={v}" for k, v in combo] + list(extra_options)
            cmd = [
                python,
                str(ROOT / "tools" / "train.py"),
                config,
                "--work-dir",
                str(wd),
                "--seed",
                str(seed),
                *_cfg_opts(opts),
            ]
            runs.append(Run(rid, tuple(cmd), wd, dict(seed=seed, **dict(combo)), cwd=str(ROOT)))
    return runs


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _env_list(name: str) -> list[str] | None:
    v = os.environ.get(name, "").replace(",", " ").split()
    return v or None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[int(s) for s in (_env_list("SEEDS") or ["0"])],
        help="seeds (env SEEDS; default 0)",
    )
    common.add_argument(
        "--work-root",
        default=os.environ.get("WORK_ROOT", str(ROOT / "work_dirs" / "paper")),
        help="one work dir per run under here (env WORK_ROOT)",
    )
    common.add_argument(
        "--gpus",
        nargs="+",
        default=_env_list("GPUS"),
        help="GPU ids, one run per GPU at a time (env GPUS); sets CUDA_VISIBLE_DEVICES",
    )
    common.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("JOBS", "1")),
        help="runs at a time when no GPUS are given (env JOBS)",
    )
    common.add_argument(
        "--python",
        default=os.environ.get("PYTHON", sys.executable),
        help="interpreter for tools/train.py (env PYTHON)",
    )
    common.add_argument(
        "--cfg-options", nargs="+", default=[], help="extra key=value for every run's config"
    )
    common.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    common.add_argument("--count", action="store_true", help="print only the number of runs")
    common.add_argument("--quiet-commands", action="store_true", help="dry run: ids only")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("table", parents=[common], help="the runs of paper tables / figures")
    t.add_argument(
        "tables",
        nargs="+",
        choices=TABLE_CHOICES,
        metavar="TABLE",
        help=f"one or more of {', '.join(TABLE_CHOICES)}",
    )
    t.add_argument("--models", nargs="+", default=_env_list("MODELS"), help="env MODELS")
    t.add_argument("--datasets", nargs="+", default=_env_list("DATASETS"), help="env DATASETS")
    t.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "data"), help="env DATA_ROOT")
    t.add_argument(
        "--ckpt-dir", default=os.environ.get("CKPT_DIR", "checkpoints"), help="env CKPT_DIR"
    )
    t.add_argument("--configs", default=str(ROOT / "configs"), help="generated configs")
    t.add_argument("--paper", default=str(ROOT / "results" / "paper"), help="paper reference")

    g = sub.add_parser("grid", parents=[common], help="a grid of --cfg-options over one config")
    g.add_argument("config")
    g.add_argument("--set", nargs="+", default=[], metavar="KEY=V1,V2", help="grid axes")
    g.add_argument("--name", help="run id prefix (default: the config's name)")
    args = p.parse_args(argv)

    if args.cmd == "table":
        runs = table_runs(
            args.tables,
            seeds=args.seeds,
            work_root=args.work_root,
            configs=args.configs,
            models=args.models,
            datasets=args.datasets,
            data_root=args.data_root,
            ckpt_dir=args.ckpt_dir,
            python=args.python,
            extra_options=args.cfg_options,
            paper_dir=args.paper,
        )
    else:
        runs = grid_runs(
            args.config,
            args.set,
            seeds=args.seeds,
            work_root=args.work_root,
            name=args.name,
            python=args.python,
            extra_options=args.cfg_options,
        )
    if args.count:
        print(len(runs))
        return 0
    if args.dry_run:
        print(dry_run_listing(runs, show_commands=not args.quiet_commands))
        return 0
    if args.gpus:
        slot_env = [{"CUDA_VISIBLE_DEVICES": str(g)} for g in args.gpus]
        jobs = len(slot_env)
    else:
        slot_env, jobs = None, max(1, args.jobs)
    print(
        f"sweep: {len(runs)} runs under {args.work_root}; "
        f"{'GPUs ' + ' '.join(args.gpus) if args.gpus else f'{jobs} at a time'}; "
        f"commands: {shlex.join(runs[0].command) if runs else '-'} ...",
        file=sys.stderr,
    )
    # A scheduler's SIGTERM (e.g. slurm) stops the sweep like Ctrl-C: running children are
    # terminated, their runs stay incomplete and are redone by the next sweep.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = run_sweep(runs, jobs=jobs, slot_env=slot_env)
    except KeyboardInterrupt:
        print("sweep interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    print(report.summary(), file=sys.stderr)
    for r in report.results:
        if r.status not in ("done", "skipped"):
            print(f"  {r.status}: {r.run.run_id}  ({r.run.log_path})", file=sys.stderr)
    if report.wall_s > 0 and not report.ok:
        print(
            f"re-run the same command to retry ({format_duration(report.wall_s)})", file=sys.stderr
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
