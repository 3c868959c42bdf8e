"""The OpenMMLab pipeline end to end on CPU with small generated data.

- tools/train.py -> checkpoint + record.json, tools/test.py evaluates it (mini classification and
  mini segmentation configs, 2 iterations each, in subprocesses as a user would run them);
- injection timing: the optimizer holds exactly the trainable parameters (LoRA adapters
  included) and a checkpoint of the *unconverted* model loads into the converted one;
- the guards: load_from=None refused, missing dataset -> one clear error, unknown lbp keys,
  mismatching checkpoints, resume through torch.load(weights_only=True);
- LHE profiling and the Figure 5 spectrum hook; dataset helpers.
"""

from __future__ import annotations

import json
import os
import os.path as osp
from pathlib import Path

import pytest
import torch
from minirun import ROOT, cls_options, load_cfg, make_runner, run_ok

MINI_CLS = ROOT / "configs/mini/mini-efficientformer_partial_lp-l1-r4_fashion-mnist.py"
MINI_CLS_LORA = ROOT / "configs/mini/mini-efficientformer_partial_lora-all_fashion-mnist.py"
MINI_CLS_LHE = ROOT / "configs/mini/mini-efficientformer_partial_lhe-rank10_fashion-mnist.py"
MINI_SEG = ROOT / "configs/mini/mini-segformer_partial_lp-l1-r4_mini-seg.py"


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory) -> str:
    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.datasets import write_idx_classification

    return write_idx_classification(tmp_path_factory.mktemp("fmnist"), n_train=48, n_test=16)


@pytest.fixture(scope="session")
def seg_root(tmp_path_factory) -> str:
    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.datasets import write_seg_folder

    return write_seg_folder(tmp_path_factory.mktemp("seg"), n_train=4, n_val=2)


def seg_options(root: str, iters: int = 2) -> list[str]:
    return [
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={iters}",
        f"default_hooks.checkpoint.interval={iters}",
        "default_hooks.logger.interval=1",
        f"train_dataloader.dataset.data_root={root}",
        f"val_dataloader.dataset.data_root={root}",
        f"test_dataloader.dataset.data_root={root}",
    ]


# ---------------------------------------------------------------------------------------------
# train -> checkpoint -> test, through the command-line tools
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mini_classification_train_and_test(idx_root, tmp_path):
    wd = tmp_path / "cls"
    options = cls_options(idx_root)
    run_ok("tools/train.py", str(MINI_CLS), "--work-dir", str(wd), "--cfg-options", *options)
    assert (wd / "iter_2.pth").exists()
    rec = json.loads((wd / "record.json").read_text())
    assert rec["status"] == "complete" and rec["kind"] == "train"
    assert rec["method"] == "lbp_wht" and rec["r"] == 4 and rec["rank"] == 10
    assert rec["iterations"] == 2 and rec["metric"] == "accuracy/top1"
    assert 0.0 <= rec["value"] <= 100.0 and rec["dataset"] == "fashion-mnist"
    assert rec["model"] == "mini-efficientformer" and rec["scope"] == "partial"
    assert rec["wall_time_s"] > 0 and rec["seed"] == 0
    assert "LBPConv2d" in (wd / "lbp_conversion.txt").read_text()
    # the digest of the effective config, reproducible from the same command line
    from mmengine.config import DictAction

    from lbp_wht.integrations.launch import effective_config
    from lbp_wht.runs.records import config_digest

    opts = {k: DictAction._parse_iterable(v) for k, v in (o.split("=", 1) for o in options)}
    again = effective_config(str(MINI_CLS), opts, work_dir=str(tmp_path / "elsewhere"))
    assert rec["config_digest"] == config_digest(again.to_dict())
    changed = effective_config(str(MINI_CLS), {**opts, "lbp.r": 6}, work_dir=str(wd))
    assert config_digest(changed.to_dict()) != rec["config_digest"]

    twd = tmp_path / "cls_test"
    out = run_ok(
        "tools/test.py",
        str(MINI_CLS),
        str(wd / "iter_2.pth"),
        "--work-dir",
        str(twd),
        "--cfg-options",
        f"test_dataloader.dataset.dataset.data_root={idx_root}",
    )
    assert "accuracy/top1" in out.stdout
    test_rec = json.loads((twd / "test_record.json").read_text())
    assert test_rec["kind"] == "test" and test_rec["status"] == "complete"
    # same weights, same (deterministic) test set: the same accuracy as the final validation
    assert test_rec["value"] == pytest.approx(rec["value"])


@pytest.mark.slow
def test_mini_segmentation_train_and_test(seg_root, tmp_path):
    wd = tmp_path / "seg"
    run_ok(
        "tools/train.py",
        str(MINI_SEG),
        "--work-dir",
        str(wd),
        "--cfg-options",
        *seg_options(seg_root),
    )
    assert (wd / "iter_2.pth").exists()
    rec = json.loads((wd / "record.json").read_text())
    assert rec["status"] == "complete" and rec["metric"] == "mIoU"
    assert rec["model"] == "mini-segformer" and rec["rank"] == 10
    twd = tmp_path / "seg_test"
    run_ok(
        "tools/test.py",
        str(MINI_SEG),
        str(wd / "iter_2.pth"),
        "--work-dir",
        str(twd),
        "--cfg-options",
        f"test_dataloader.dataset.data_root={seg_root}",
    )
    test_rec = json.loads((twd / "test_record.json").read_text())
    assert test_rec["metric"] == "mIoU" and test_rec["value"] == pytest.approx(rec["value"])


# ---------------------------------------------------------------------------------------------
# injection timing
# ---------------------------------------------------------------------------------------------
def test_optimizer_holds_exactly_the_trainable_parameters(idx_root, tmp_path):
    """Conversion happens at model build: the optimizer (built in Runner.train before any
    before_run hook) holds the LoRA adapters and nothing frozen, and they train."""
    cfg = load_cfg(MINI_CLS_LORA, cls_options(idx_root, iters=1), tmp_path)
    runner = make_runner(cfg)
    model = runner.model
    adapters = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert adapters, "LoRA-all put no adapters into the model"
    b_before = {n: p.detach().clone() for n, p in adapters.items() if n.endswith("lora_B")}
    assert all(torch.count_nonzero(v) == 0 for v in b_before.values())  # zero-init
    runner.train()
    in_optim = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optim == trainable
    assert {id(p) for p in adapters.values()} <= in_optim
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("backbone.network.0") for n in frozen)
    assert all(id(dict(model.named_parameters())[n]) not in in_optim for n in frozen)
    # the adapters were really optimised (lora_B left zero)
    assert any(torch.count_nonzero(dict(adapters)[n]) > 0 for n in b_before)


def _plain_checkpoint(cfg, path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint of the unconverted model (random, non-default weights)."""
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope(cfg.default_scope)
    inner = dict(cfg.model)
    inner.setdefault("data_preprocessor", cfg.data_preprocessor)
    plain = MODELS.build(inner)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_()
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    torch.save({"state_dict": state, "meta": {}}, path)
    return state


@pytest.mark.parametrize("config", [MINI_CLS_LORA, MINI_CLS])
def test_load_from_unconverted_checkpoint(config, idx_root, tmp_path):
    cfg = load_cfg(config, cls_options(idx_root, iters=1), tmp_path)
    ckpt = tmp_path / "plain.pth"
    state = _plain_checkpoint(cfg, ckpt)
    cfg.load_from = str(ckpt)
    runner = make_runner(cfg)
    runner._init_model_weights()
    runner.load_or_resume()  # what Runner.train does after building the optimizer
    loaded = runner.model.state_dict()
    converted = runner.model.lbp_info["report"].names()
    assert converted, "nothing converted"
    for k, v in state.items():  # exact: loading copies tensors, no arithmetic
        assert torch.equal(loaded[k], v), k
    extra = set(loaded) - set(state)
    assert all(".lora_" in k for k in extra)  # only adapters are new


def test_mismatching_checkpoint_is_an_error(idx_root, tmp_path):
    from lbp_wht.integrations.runner import CheckpointMismatchError

    cfg = load_cfg(MINI_CLS, cls_options(idx_root, iters=1), tmp_path)
    ckpt = tmp_path / "plain.pth"
    state = _plain_checkpoint(cfg, ckpt)
    del state["backbone.network.3.1.mlp.fc1.weight"]
    state["backbone.network.0.0.mlp.fc1.weight"] = torch.zeros(3, 3)  # wrong shape
    torch.save({"state_dict": state}, ckpt)
    cfg.load_from = str(ckpt)
    runner = make_runner(cfg)
    with pytest.raises(CheckpointMismatchError, match="network.3.1.mlp.fc1.weight") as err:
        runner.load_or_resume()
    assert "network.0.0.mlp.fc1.weight" in str(err.value)


def test_head_of_another_size_is_reinitialised(idx_root, tmp_path):
    """An ImageNet-style checkpoint: same backbone, 1000-class head -> head left at init."""
    cfg = load_cfg(MINI_CLS, cls_options(idx_root, iters=1), tmp_path)
    ckpt = tmp_path / "plain.pth"
    state = _plain_checkpoint(cfg, ckpt)
    state["head.head.weight"] = torch.zeros(1000, state["head.head.weight"].shape[1])
    state["head.head.bias"] = torch.zeros(1000)
    state["head.dist_head.weight"] = torch.zeros(1000, 4)  # unused distillation head
    torch.save({"state_dict": state}, ckpt)
    cfg.load_from = str(ckpt)
    runner = make_runner(cfg)
    runner.load_or_resume()
    loaded = runner.model.state_dict()
    assert loaded["head.head.weight"].shape[0] == 10
    assert torch.equal(
        loaded["backbone.network.3.1.mlp.fc1.weight"], state["backbone.network.3.1.mlp.fc1.weight"]
    )


def test_mmseg_checkpoint_loads_into_explicit_attention(seg_root, tmp_path):
    """An ADE20K-style mmseg checkpoint (nn.MultiheadAttention keys, 150-class classifier)
    loads into the converted Segformer: q/k/v/proj split from in_proj, classifier re-init."""
    from mmengine.registry import MODELS, init_default_scope

    cfg = load_cfg(MINI_SEG, seg_options(seg_root, iters=1), tmp_path)
    init_default_scope("mmseg")
    inner = dict(cfg.model)
    inner["backbone"] = dict(inner["backbone"], type="MixVisionTransformer")
    inner["decode_head"] = dict(inner["decode_head"], num_classes=150)
    inner["data_preprocessor"] = cfg.data_preprocessor
    plain = MODELS.build(inner)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    key = "backbone.layers.3.1.0.attn.attn.in_proj_weight"
    assert key in state
    torch.save({"state_dict": state}, tmp_path / "ade.pth")
    cfg.load_from = str(tmp_path / "ade.pth")
    runner = make_runner(cfg)
    runner.load_or_resume()
    loaded = runner.model.state_dict()
    c = loaded["backbone.layers.3.1.0.attn.q.weight"].shape[0]
    assert torch.equal(loaded["backbone.layers.3.1.0.attn.q.weight"], state[key][:c])
    assert torch.equal(loaded["backbone.layers.3.1.0.attn.v.weight"], state[key][2 * c :])
    assert loaded["decode_head.conv_seg.weight"].shape[0] == 4


# ---------------------------------------------------------------------------------------------
# guards
# ---------------------------------------------------------------------------------------------
def test_load_from_none_needs_allow_random_init(idx_root, tmp_path):
    opts = cls_options(idx_root, iters=1) + ["lbp.allow_random_init=False"]
    runner = make_runner(load_cfg(MINI_CLS, opts, tmp_path))
    with pytest.raises(RuntimeError, match="allow_random_init"):
        runner.train()


def test_missing_dataset_is_one_clear_error(tmp_path):
    from lbp_wht.integrations.datasets import DatasetNotFoundError

    missing = tmp_path / "nowhere"
    runner = make_runner(load_cfg(MINI_CLS, cls_options(str(missing), iters=1), tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        runner.train()
    msg = str(err.value)
    assert str(missing) in msg and "dataset-fashion-mnist" in msg and "data/README.md" in msg
    assert msg.count("  train_dataloader:") == 1  # one error, listing each loader once


def test_missing_file_inside_dataset_root(tmp_path):
    from lbp_wht.integrations.datasets import DatasetNotFoundError, check_dataloader_paths

    (tmp_path / "cifar").mkdir()
    dl = dict(dataset=dict(type="CIFAR100", data_root=str(tmp_path / "cifar"), split="train"))
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python/train"):
        check_dataloader_paths({"train_dataloader": dl})


def test_every_lbp_key_has_a_type_schema():
    from lbp_wht.integrations.build import LBP_DEFAULTS, LBP_SCHEMA, validate_lbp_cfg

    assert set(LBP_SCHEMA) == set(LBP_DEFAULTS)
    # the defaults themselves pass the schema
    validate_lbp_cfg(dict(method="lbp_wht", model="mini-efficientformer"))


def test_unknown_lbp_key_is_an_error(idx_root, tmp_path):
    from lbp_wht.integrations.build import LBPConfigError

    cfg = load_cfg(MINI_CLS, cls_options(idx_root) + ["lbp.rr=6"], tmp_path)
    with pytest.raises(LBPConfigError, match="rr"):
        make_runner(cfg)


def test_cfg_options_sweep_changes_the_rank(idx_root, tmp_path):
    cfg = load_cfg(MINI_CLS, cls_options(idx_root) + ["lbp.r=6"], tmp_path)
    runner = make_runner(cfg)
    from lbp_wht.integrations.build import lbp_layers

    ranks = {m.rank for m in lbp_layers(runner.model).values()}
    assert ranks == {21}  # LP_L1-6 keeps 21 bases (Eq. 8)


def test_batchnorm_stays_in_eval_mode_while_training(idx_root, tmp_path):
    cfg = load_cfg(MINI_CLS, cls_options(idx_root, iters=1), tmp_path)
    runner = make_runner(cfg)
    model = runner.model
    model.train()
    seen = []
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    hooks = [bn.register_forward_pre_hook(lambda m, a: seen.append(m.training)) for bn in bns]
    stats = bns[-1].running_mean.clone()
    x = torch.randn(4, 1, 28, 28)
    from mmpretrain.structures import DataSample

    model(x, [DataSample().set_gt_label(0) for _ in range(4)], mode="loss")
    for h in hooks:
        h.remove()
    assert seen and not any(seen)
    assert torch.equal(stats, bns[-1].running_mean)  # running statistics untouched


def test_norm_eval_off_with_lbp_warns(idx_root, tmp_path):
    cfg = load_cfg(MINI_CLS, cls_options(idx_root) + ["lbp.norm_eval=False"], tmp_path)
    with pytest.warns(UserWarning, match="BatchNorm"):
        make_runner(cfg)


# ---------------------------------------------------------------------------------------------
# checkpoints through torch.load(weights_only=True), resume
# ---------------------------------------------------------------------------------------------
def test_resume_from_own_checkpoint(idx_root, tmp_path):
    wd = tmp_path / "resume"
    runner = make_runner(load_cfg(MINI_CLS, cls_options(idx_root, iters=2), wd))
    runner.train()
    assert (wd / "iter_2.pth").exists()
    # the file pickles mmengine objects (message hub), yet loads with weights_only=True
    import zipfile

    with zipfile.ZipFile(wd / "iter_2.pth") as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"HistoryBuffer" in pkl and b"getattr" in pkl
    torch.load(wd / "iter_2.pth", map_location="cpu", weights_only=True)
    opts = cls_options(idx_root, iters=3)
    cfg = load_cfg(MINI_CLS, opts, wd)
    cfg.resume, cfg.load_from = True, str(wd / "iter_2.pth")
    runner2 = make_runner(cfg)
    runner2.train()
    assert runner2.iter == 3


def test_getattr_allowlist_is_restricted():
    import pickle

    from mmengine.logging import HistoryBuffer

    from lbp_wht.integrations.checkpoint import _history_buffer_getattr

    assert _history_buffer_getattr(HistoryBuffer, "mean") is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError):
        _history_buffer_getattr(os, "system")
    with pytest.raises(pickle.UnpicklingError):
        _history_buffer_getattr(HistoryBuffer, "__init__")


# ---------------------------------------------------------------------------------------------
# LHE selection and the Figure 5 spectrum
# ---------------------------------------------------------------------------------------------
def test_lhe_profiles_then_fixes_bases(idx_root, tmp_path):
    proj = "backbone.network.3.4.token_mixer.proj"  # the Meta3D block's output projection
    opts = cls_options(idx_root, iters=3) + ["lbp.lhe_iters=2", f"lbp.spectrum_layer={proj}"]
    runner = make_runner(load_cfg(MINI_CLS_LHE, opts, tmp_path))
    from lbp_wht.integrations.build import lbp_layers

    layers = lbp_layers(runner.model)
    assert layers and all(m.bases is None for m in layers.values())
    runner.train()
    assert all(m.rank == 10 for m in layers.values())
    chosen = json.loads((tmp_path / "lhe_bases.json").read_text())
    assert chosen["iterations"] == 2 and len(chosen["bases"]) == len(layers)
    spec = json.loads((tmp_path / "spectrum.json").read_text())
    assert spec["layer"] == proj
    assert len(spec["energy"]) == 8 and spec["steps"] == 3
    # the chosen bases travel with the checkpoint (resume / test rebuild the same layers)
    ckpt = torch.load(tmp_path / "iter_3.pth", map_location="cpu", weights_only=True)
    assert ckpt["lbp_bases"][proj] == [list(b) for b in layers[proj].bases]


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------
def test_class_subset_relabels_and_caps(idx_root):
    import lbp_wht.integrations.runner  # noqa: F401  (registers the datasets)
    from lbp_wht.integrations.datasets import ClassSubsetDataset

    inner = dict(type="GzFashionMNIST", data_root=idx_root, split="train", pipeline=[])
    ds = ClassSubsetDataset(inner, classes=[5, 7, 9], max_per_class=2, seed=0)
    assert len(ds) == 6
    labels = sorted(int(ds.get_data_info(i)["gt_label"]) for i in range(len(ds)))
    assert labels == [0, 0, 1, 1, 2, 2]
    assert ds.metainfo["classes"] == ("Sandal", "Sneaker", "Ankle boot")
    again = ClassSubsetDataset(inner, classes=[5, 7, 9], max_per_class=2, seed=0)
    assert again.indices == ds.indices  # the same on every rank


def test_fashion_mnist_split_selects_the_files(idx_root):
    """split='test' reads t10k-* (mmpretrain's MNIST would read the training files)."""
    import lbp_wht.integrations.runner  # noqa: F401
    from lbp_wht.integrations.datasets import GzFashionMNIST

    train = GzFashionMNIST(data_root=idx_root, split="train", pipeline=[])
    test = GzFashionMNIST(data_root=idx_root, split="test", pipeline=[])
    assert len(train) == 48 and len(test) == 16
    assert test.get_data_info(0)["img"].shape == (28, 28)


def test_places365_reads_the_official_lists(tmp_path):
    import cv2
    import numpy as np

    import lbp_wht.integrations.runner  # noqa: F401
    from lbp_wht.integrations.datasets import Places365

    (tmp_path / "data_256/a/airfield").mkdir(parents=True)
    (tmp_path / "val_256").mkdir()
    img = np.zeros((8, 8, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "data_256/a/airfield/00000001.jpg"), img)
    cv2.imwrite(str(tmp_path / "val_256/Places365_val_00000001.jpg"), img)
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n/a/alley 1\n")
    (tmp_path / "places365_train_standard.txt").write_text("/a/airfield/00000001.jpg 0\n")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 1\n")
    train = Places365(str(tmp_path), split="train", pipeline=[dict(type="LoadImageFromFile")])
    assert train.metainfo["classes"] == ("airfield", "alley")
    assert train[0]["img"].shape == (8, 8, 3) and int(train.get_data_info(0)["gt_label"]) == 0
    val = Places365(str(tmp_path), split="val")
    assert osp.basename(val.get_data_info(0)["img_path"]) == "Places365_val_00000001.jpg"


# ---------------------------------------------------------------------------------------------
# config key checks
# ---------------------------------------------------------------------------------------------
def test_runner_keys_cover_what_the_runner_reads():
    import inspect

    from mmengine.runner import Runner

    from lbp_wht.integrations.launch import RUNNER_KEYS

    params = set(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"}
    assert params <= RUNNER_KEYS, params - RUNNER_KEYS


def test_committed_configs_pass_the_key_checks():
    """A sample (every mini config, the first of each paper-table folder): no committed config
    has a top-level key that looks like a misspelling, and every lbp block validates."""
    from mmengine.config import Config

    from lbp_wht.integrations.build import check_lbp_preset, validate_lbp_cfg
    from lbp_wht.integrations.launch import check_config_keys

    folders = sorted(
        p for p in (ROOT / "configs").glob("*/*") if p.is_dir() and "_base_" not in p.parts
    )
    sample = sorted((ROOT / "configs/mini").glob("*.py"))
    sample += [min(f.glob("*.py")) for f in folders if list(f.glob("*.py"))]
    assert len(sample) > 10
    for path in sample:
        cfg = Config.fromfile(str(path))
        check_config_keys(cfg)
        check_lbp_preset(validate_lbp_cfg(cfg.get("lbp")))


def test_resuming_a_finished_run_keeps_or_completes_its_record(idx_root, tmp_path):
    """--resume after the last iteration trains nothing and evaluates nothing: a complete
    record (with its metric) stays as it was; an incomplete one gets the final evaluation."""
    opts = cls_options(idx_root, iters=2)
    make_runner(load_cfg(MINI_CLS, opts, tmp_path)).train()
    first = (tmp_path / "record.json").read_text()
    assert json.loads(first)["value"] is not None

    def resume() -> dict:
        cfg = load_cfg(MINI_CLS, opts, tmp_path)
        cfg.resume = "auto"
        make_runner(cfg).train()
        return json.loads((tmp_path / "record.json").read_text())

    resume()
    assert (tmp_path / "record.json").read_text() == first
    (tmp_path / "record.json").write_text(first.replace('"complete"', '"interrupted"'))
    rec = resume()
    assert rec["status"] == "complete" and rec["value"] == json.loads(first)["value"]


def test_sweep_expects_the_digest_the_run_records():
    """lbp_wht.experiments.runs.expected_digest (what a sweep compares) equals the digest of
    the config tools/train.py builds for that run (what the record stores, see above)."""
    from mmengine.config import DictAction

    from lbp_wht.experiments.runs import expected_digest, grid_runs
    from lbp_wht.integrations.launch import effective_config
    from lbp_wht.runs.records import config_digest

    config = str(MINI_CLS)
    runs = grid_runs(config, ["lbp.r=2,6"], seeds=[0, 1], work_root="/tmp/unused",
                     extra_options=["train_cfg.max_iters=5"])  # fmt: skip
    for run in runs:
        opts = {k: DictAction._parse_iterable(v)
                for k, v in (o.split("=", 1) for o in run.meta["cfg_options"])}  # fmt: skip
        cfg = effective_config(config, opts, work_dir=str(run.work_dir), seed=run.meta["seed"])
        assert expected_digest(run) == config_digest(cfg.to_dict()), run.run_id
