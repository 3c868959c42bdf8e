"""The paper's table catalogue (lbp_wht/experiments/catalog.py) and the runs built from it."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest

from lbp_wht.experiments.catalog import Cell, resolve_config, table_cells
from lbp_wht.experiments.runs import table_runs
from lbp_wht.experiments.vocab import method_key, method_tag

ROOT = Path(__file__).resolve().parents[1]
#: Per seed, the runs each reproduction script lists (shared runs counted once per call).
RUNS_PER_SEED = {"2": 210, "3": 24, "4": 6, "5": 168, "6": 10, "7": 7, "figures": 51}


@pytest.mark.parametrize("table,n", RUNS_PER_SEED.items())
def test_every_table_lists_the_same_runs_as_before(table, n, tmp_path):
    assert len(table_runs([table], seeds=[0], work_root=tmp_path)) == n
    assert len(table_runs([table], seeds=[0, 1, 2], work_root=tmp_path)) == 3 * n


def _expected() -> dict[str, dict[str, str]]:
    """Run id -> what its config trained before the config layout changed (recorded from the
    previous layout: config file, model, preset, scope, method tag, dataset, classes,
    backbone, input size, checkpoint)."""
    with open(ROOT / "tests" / "data" / "paper_runs.csv", newline="") as f:
        return {row.pop("run_id"): row for row in csv.DictReader(f)}


def test_each_paper_row_resolves_to_the_same_model_method_and_dataset(tmp_path):
    import argparse

    from mmengine.config import Config, DictAction

    import lbp_wht.integrations  # noqa: F401

    expected = _expected()
    runs = table_runs(["2", "3", "4", "5", "6", "7", "figures"], seeds=[0], work_root=tmp_path)
    assert {r.run_id for r in runs} == set(expected)
    parsed: dict[str, dict] = {}
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    for run in runs:
        config = run.meta["config"]
        if config not in parsed:
            parsed[config] = Config.fromfile(config).to_dict()
        cfg = Config(copy.deepcopy(parsed[config]))
        opts = list(run.meta["cfg_options"])
        if opts:
            cfg.merge_from_dict(parser.parse_args(["--cfg-options", *opts]).cfg_options)
        lbp, model = cfg.lbp, cfg.model
        head = model.get("head") or model["decode_head"]
        got = dict(
            config=str(Path(config).relative_to(ROOT)),
            model=lbp["model"],
            preset=lbp.get("preset") or "",
            scope=lbp["scope"],
            method=method_tag(
                method_key(lbp["method"], lbp.get("select"), lbp.get("r"), lbp.get("rank"))
            ),
            dataset=cfg.dataset_name,
            num_classes=str(head["num_classes"]),
            backbone=model["backbone"]["type"],
            size=str(cfg.get("img_size") or list(cfg.crop_size)),
            load_from=cfg.load_from or "",
        )
        assert got == expected[run.run_id], run.run_id


def test_resolver_prefers_the_cells_own_config_then_a_stand_in():
    lp7 = Cell("efficientformer-l1", "full", "lbp_wht", "lp_l1", 7, None, "cifar100")
    config, opts = resolve_config(lp7)
    assert config.name == "efficientformer-l1_full_lp-l1-r7_cifar100.py" and opts == []
    lp3 = Cell("efficientformer-l1", "partial", "lbp_wht", "lp_l1", 3, None, "cars")
    config, opts = resolve_config(lp3)
    assert config.name == "efficientformer-l1_partial_lp-l1-r4_stanford-cars.py"
    assert opts == ["lbp.method=lbp_wht", "lbp.select=lp_l1", "lbp.r=3"]
    # Table 2's own folder first; the same file name exists in table4/ too.
    lp4 = Cell("efficientformer-l1", "partial", "lbp_wht", "lp_l1", 4, None, "cifar10")
    assert resolve_config(lp4)[0].parent.name == "efficientformer-l1"
    assert resolve_config(lp4, table="4")[0].parent.name == "table4"


def test_resolver_and_catalogue_name_what_is_missing(tmp_path):
    cell = Cell("efficientformer-l1", "partial", "lora", None, None, None, "cifar10")
    with pytest.raises(FileNotFoundError, match="efficientformer-l1 / partial / cifar10"):
        resolve_config(cell, tmp_path)
    with pytest.raises(ValueError, match="'9'"):
        table_cells("9")
    with pytest.raises(ValueError, match="vit-b"):
        table_cells("4", models=["vit-b"])
