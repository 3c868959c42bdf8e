"""Bad-input catalogue of the training pipeline: each case must raise one exact error type whose
message names the offending key, file or layer (and never suggests turning off the
weights-only loader).

Areas: the typed ``lbp`` block, config keys nothing reads, unreadable / unsafe / unfitting
checkpoints (``load_from``, ``--resume``, ``tools/test.py``), an ``lbp.model`` that is not the
model built, dataset files and labels, missing inputs (all at once), the work dir (an earlier
run, read-only, full), non-finite losses and metrics, records with bad metrics, failed saves;
and through the tools every kind of bad input that used to end in a traceback (one named
error, exit code 2, nothing started). The faults that must lose nothing (kills, a full disk
during a save, two runs on one dir, SIGTERM) run as whole trainings in ``test_faults.py``.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from minirun import MINI_CLS, ROOT, cls_options, load_cfg, make_runner, tool, write_mini_data

import lbp_wht.integrations.runner as rn
from lbp_wht.integrations import checkpoint as ck
from lbp_wht.integrations import datasets as ds
from lbp_wht.integrations import launch
from lbp_wht.integrations.build import LBPConfigError, check_lbp_preset, validate_lbp_cfg
from lbp_wht.integrations.recording import (
    NonFiniteGuardHook,
    NonFiniteLossError,
    NonFiniteMetricError,
    build_record,
)
from lbp_wht.runs import records

MINI_LORA = ROOT / "configs/mini/mini-efficientformer_partial_lora-all_fashion-mnist.py"

BASE = dict(method="lbp_wht", model="mini-efficientformer")


# ---------------------------------------------------------------------------------------------
# shared material (built once)
# ---------------------------------------------------------------------------------------------
class Ctx:
    """Lazily built material the cases share: data, a runner, a training checkpoint."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def data(self) -> str:
        return self._once("data", lambda: write_mini_data(self.root / "data"))

    def cfg(self, *extra: str, work: str = "work"):
        return load_cfg(MINI_CLS, cls_options(self.data, iters=2) + list(extra), self.root / work)

    @property
    def runner(self):
        return self._once("runner", lambda: make_runner(self.cfg(work="shared")))

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.runner.model.state_dict()

    @property
    def train_ckpt(self) -> Path:
        def make() -> Path:
            runner = make_runner(self.cfg(work="trained"))
            runner.train()
            return self.root / "trained" / "iter_2.pth"

        return self._once("train_ckpt", make)

    def file(self, name: str, content: bytes | str | None = None, obj: Any = None) -> Path:
        path = self.root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if obj is not None:
            torch.save(obj, path)
        elif isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            path.write_bytes(content)
        return path

    def valid_ckpt_bytes(self) -> bytes:
        return self._once(
            "ckpt_bytes",
            lambda: self.file("valid.pth", obj={"state_dict": self.state}).read_bytes(),
        )


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    return Ctx(tmp_path_factory.mktemp("bad_inputs"))


# ---------------------------------------------------------------------------------------------
# case builders
# ---------------------------------------------------------------------------------------------
def lbp(**values: Any) -> Callable[[Ctx], Any]:
    return lambda c: validate_lbp_cfg({**BASE, **values})


def options(**opts: Any) -> Callable[[Ctx], Any]:
    return lambda c: launch.effective_config(
        str(MINI_CLS), {k.replace("__", "."): v for k, v in opts.items()}, work_dir="unused"
    )


def load_file(name: str, content: Any = None, obj: Any = None) -> Callable[[Ctx], Any]:
    return lambda c: ck.load_checkpoint_file(c.file(name, content, obj))


def truncated(c: Ctx) -> Any:
    blob = c.valid_ckpt_bytes()
    return ck.load_checkpoint_file(c.file("truncated.pth", blob[: len(blob) // 2]))


def corrupt_middle(c: Ctx) -> Any:
    blob = bytearray(c.valid_ckpt_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 4096] = b"\0" * 4096
    return ck.load_checkpoint_file(c.file("corrupt.pth", bytes(blob)))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def load_from(make_obj: Callable[[Ctx], Any], name: str) -> Callable[[Ctx], Any]:
    """``load_from`` of a file holding ``make_obj(ctx)`` into the mini runner."""
    return lambda c: c.runner.load_checkpoint(str(c.file(name, obj=make_obj(c))))


def resume_with(*extra: str, ckpt: Callable[[Ctx], Path] | None = None) -> Callable[[Ctx], Any]:
    """``--resume`` of the mini training checkpoint by a runner with ``extra`` options."""

    def run(c: Ctx) -> Any:
        path = ckpt(c) if ckpt else c.train_ckpt
        runner = make_runner(c.cfg(*extra, work=f"resume_{len(extra)}_{path.stem}"))
        return runner.resume(str(path))

    return run


def nan_training_ckpt(c: Ctx) -> Path:
    ckpt = torch.load(c.train_ckpt, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    return c.file("nan_train.pth", obj=ckpt)


def all_unreadable(c: Ctx) -> Any:
    work = c.root / "all_bad"
    work.mkdir(exist_ok=True)
    (work / "iter_2.pth").write_bytes(b"PK\x03\x04 cut")
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    cfg = c.cfg(work="all_bad")
    cfg.resume = "auto"
    return make_runner(cfg).load_or_resume()


def idx_file(c: Ctx, name: str, mutate: Callable[[bytes], bytes]) -> Any:
    root = c.root / name
    write_mini_data(root, n_train=8, n_test=4)
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(mutate(gzip.compress(raw)) if name == "cut_gz" else gzip.compress(mutate(raw)))
    return ds.GzFashionMNIST(data_root=str(root), split="train", pipeline=[]).full_init()


def inputs(*extra: str, load_from: str | None = None) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        cfg = c.cfg(*extra)
        if load_from is not None:
            cfg.load_from = (
                str(c.root / load_from)
                if load_from != "EMPTY"
                else str(c.file("empty_for_inputs.pth", b""))
            )
        return launch.check_inputs(cfg, "train")

    return run


def complete_record(c: Ctx) -> Any:
    work = c.root / "done"
    work.mkdir(exist_ok=True)
    (work / "record.json").write_text(json.dumps(dict(status="complete", metric="m", value=1)))
    return launch.claim_work_dir(str(work), resume=False)


def nonfinite_loss(c: Ctx) -> Any:
    runner = SimpleNamespace(iter=4, max_iters=10, cfg=dict(load_from="ckpt/nan.pth"))
    NonFiniteGuardHook().after_train_iter(runner, 0, outputs={"loss": torch.tensor(float("nan"))})


def nonfinite_metric(c: Ctx) -> Any:
    NonFiniteGuardHook().after_val_epoch(None, {"accuracy/top1": float("nan"), "loss": 1.0})


def save_into_missing_dir(c: Ctx) -> Any:
    final = c.root / "no_such_dir" / "iter_2.pth"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"x")

    return ck.save_durably(write, str(final))


def disk_full(c: Ctx) -> Any:
    def write(tmp: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    return ck.save_durably(write, str(c.root / "iter_8.pth"), intact="/w/iter_6.pth")


def config_file_typo(c: Ctx) -> Any:
    path = c.file("typo_cfg.py", f"_base_ = ['{MINI_CLS}']\nlpb = dict(r=6)\n")
    return launch.effective_config(str(path), work_dir="unused")


def prefixed(c: Ctx) -> dict:
    return {"state_dict": {f"model.{k}": v for k, v in c.state.items()}}


def with_nan(c: Ctx) -> dict:
    state = dict(c.state)
    state["backbone.network.3.1.mlp.fc1.weight"] = torch.full_like(
        state["backbone.network.3.1.mlp.fc1.weight"], float("nan")
    )
    return {"state_dict": state}


def interrupted_run(c: Ctx) -> Any:
    """A fresh start (no --resume) in a work dir a killed or stopped training left behind."""
    work = c.root / "interrupted"
    work.mkdir(exist_ok=True)
    (work / "record.json").write_text(json.dumps(dict(status="interrupted", config="x.py")))
    (work / "iter_2.pth").write_bytes(c.train_ckpt.read_bytes())
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    return launch.claim_work_dir(str(work), resume=False)


def another_model(c: Ctx) -> Any:
    """The mini model's config with lbp.model naming another model (and its preset)."""
    return make_runner(c.cfg("lbp.model=efficientformer-l1", work="another_model"))


def variant_of_another_type(c: Ctx) -> Any:
    """lbp.model names a model of another backbone type, declared as a variant of it."""
    opts = ("lbp.model=swinv2-small-w8", "lbp.model_variant=smaller")
    return make_runner(c.cfg(*opts, work="variant"))


def lora_checkpoint(c: Ctx) -> Path:
    """A checkpoint of the mini LoRA-all model: the backbone and trained-looking adapters."""

    def make() -> Path:
        runner = make_runner(load_cfg(MINI_LORA, cls_options(c.data), c.root / "lora"))
        state = runner.model.state_dict()
        for k in (k for k in state if k.endswith("lora_B")):
            state[k] = torch.full_like(state[k], 0.01)
        return c.file("lora.pth", obj={"state_dict": state, "meta": {}})

    return c._once("lora_ckpt", make)


def run_test_of(config: Path, ckpt: Callable[[Ctx], Path], work: str) -> Callable[[Ctx], Any]:
    """``tools/test.py config ckpt`` in-process: the runner's test with load_from."""

    def run(c: Ctx) -> Any:
        cfg = load_cfg(config, cls_options(c.data), c.root / work)
        cfg.load_from = str(ckpt(c))
        return make_runner(cfg).test()

    return run


def plain_checkpoint(c: Ctx) -> Path:
    return c.file("plain_state.pth", obj={"state_dict": c.state, "meta": {}})


def headless_checkpoint(c: Ctx) -> Path:
    state = {k: v for k, v in c.state.items() if not k.startswith("head.")}
    return c.file("no_head.pth", obj={"state_dict": state, "meta": {}})


def another_r_tested(c: Ctx) -> Any:
    """``tools/test.py`` of a trained checkpoint with a config of another ``lbp.r``."""
    cfg = load_cfg(MINI_CLS, cls_options(c.data) + ["lbp.r=2"], c.root / "t_r2")
    cfg.load_from = str(c.train_ckpt)
    return make_runner(cfg).test()


def resume_no_config(c: Ctx) -> Any:
    """``--resume`` of a training checkpoint whose meta holds no config."""
    ckpt = torch.load(c.train_ckpt, map_location="cpu", weights_only=True)
    ckpt["meta"].pop("cfg")
    path = c.file("no_cfg.pth", obj=ckpt)
    return make_runner(c.cfg(work="resume_no_cfg")).resume(str(path))


def labels_beyond_classes(c: Ctx, wrapped: bool) -> Any:
    """Fashion-MNIST-format files with an 11th label (10 classes in the class list)."""
    root = c.root / "eleven"
    c._once("eleven", lambda: ds.write_idx_classification(root, 22, 11, num_classes=11))
    inner = dict(type="GzFashionMNIST", data_root=str(root), split="train", pipeline=[])
    if wrapped:  # classes=None keeps "all" classes: label 10 would silently drop out
        return ds.ClassSubsetDataset(inner)
    return ds.GzFashionMNIST(data_root=str(root), split="train", pipeline=[]).full_init()


def record_with(**fields: Any) -> Callable[[Ctx], Any]:
    return lambda c: records.write_record(c.root / "bad_metric" / "record.json", fields)


def built_record_with(metrics: dict) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        rec = build_record(c.cfg(), kind="train", status="complete", metrics=metrics)
        return records.write_record(c.root / "bad_metric2" / "record.json", rec)

    return run


def work_dir_fault(err: int) -> Callable[[Ctx], Any]:
    """Claim a work dir on a file system that fails every write with ``err`` (a read-only or
    a full disk): the lock file, the probe."""

    def run(c: Ctx) -> Any:
        from unittest import mock

        work = c.root / f"fault_{errno.errorcode[err]}" / "run"
        real_open = os.open

        def failing_open(path: Any, flags: int, *a: Any) -> int:
            if str(path).startswith(str(work.parent)) and flags & (os.O_WRONLY | os.O_RDWR):
                raise OSError(err, os.strerror(err), str(path))
            return real_open(path, flags, *a)

        with mock.patch("os.open", failing_open):
            return launch.claim_work_dir(str(work), resume=False)

    return run


# ---------------------------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Ctx], Any]
    error: type[BaseException]
    names: tuple[str, ...]


CASES = [
    # -- the lbp block: every key by type, no string converted --------------------------------
    Case("norm_eval_str", lbp(norm_eval="False"), LBPConfigError, ("lbp.norm_eval", "'False'")),
    Case("allow_random_init_str", lbp(allow_random_init="False"), LBPConfigError,
         ("lbp.allow_random_init", "True or False")),
    Case("strict_load_str", lbp(strict_load="false"), LBPConfigError,
         ("lbp.strict_load", "lbp.strict_load=False")),
    Case("lora_alpha_str", lbp(lora_alpha="8"), LBPConfigError, ("lbp.lora_alpha", "=8 (no quotes")),
    Case("lora_alpha_abc", lbp(lora_alpha="abc"), LBPConfigError, ("lbp.lora_alpha", "'abc'")),
    Case("lora_alpha_zero", lbp(lora_alpha=0), LBPConfigError, ("lbp.lora_alpha", "> 0")),
    Case("lora_alpha_nan", lbp(lora_alpha=float("nan")), LBPConfigError, ("lbp.lora_alpha", "nan")),
    Case("lora_rank_zero", lbp(lora_rank=0), LBPConfigError, ("lbp.lora_rank", ">= 1")),
    Case("reinit_keys_str", lbp(reinit_keys="head.*"), LBPConfigError,
         ("lbp.reinit_keys", "['head.*']")),
    Case("drop_keys_str", lbp(drop_keys="head.*"), LBPConfigError, ("lbp.drop_keys",)),
    Case("drop_keys_ints", lbp(drop_keys=[1, 2]), LBPConfigError, ("lbp.drop_keys", "glob")),
    Case("r_float", lbp(r=6.0), LBPConfigError, ("lbp.r", "6.0", "integer")),
    Case("r_bool", lbp(r=True), LBPConfigError, ("lbp.r", "True")),
    Case("r_str", lbp(r="6"), LBPConfigError, ("lbp.r", "lbp.r=6")),
    Case("r_too_big", lbp(r=16), LBPConfigError, ("lbp.select/r/order", "radius=16")),
    Case("order_not_pow2", lbp(order=6), LBPConfigError, ("lbp.select/r/order",)),
    Case("unknown_key", lbp(rr=6), LBPConfigError, ("lbp.rr", "did you mean 'r'")),
    Case("unknown_key_swap", lbp(lora_alhpa=4), LBPConfigError, ("lbp.lora_alhpa", "'lora_alpha'")),
    Case("method_typo", lbp(method="lbp-wht"), LBPConfigError, ("lbp.method", "'lbp_wht'")),
    Case("select_typo", lbp(select="lp_li"), LBPConfigError, ("lbp.select", "'lp_l1'")),
    Case("scope_typo", lbp(scope="partal"), LBPConfigError, ("lbp.scope", "'partial'")),
    Case("padding_typo", lbp(padding="zeros"), LBPConfigError, ("lbp.padding", "'zero'")),
    Case("model_unknown", options(lbp__model="efficientformer-l2"), LBPConfigError,
         ("lbp.model", "'efficientformer-l1'")),
    Case("preset_unknown", lambda c: check_lbp_preset({**BASE, "preset": "mini-efficientformr"}),
         LBPConfigError, ("lbp.preset", "'mini-efficientformer'")),
    Case("lhe_without_rank", lbp(select="lhe"), LBPConfigError, ("lbp.rank",)),
    Case("lhe_iters_zero", lbp(select="lhe", rank=10, lhe_iters=0), LBPConfigError,
         ("lbp.lhe_iters",)),
    Case("spectrum_iters_str", lbp(spectrum_iters="10"), LBPConfigError, ("lbp.spectrum_iters",)),
    Case("method_missing", lambda c: validate_lbp_cfg({"model": "mini-efficientformer"}),
         LBPConfigError, ("lbp.method is required",)),
    Case("lbp_not_a_dict", lambda c: validate_lbp_cfg("lbp_wht"), LBPConfigError, ("lbp must be",)),
    # -- config keys that nothing reads ---------------------------------------------------------
    Case("block_typo_option", options(lpb__r=6), launch.ConfigKeyError, ("lpb.r", "'lbp'")),
    Case("top_typo_option", options(optim_wraper__optimizer__lr=1.0), launch.ConfigKeyError,
         ("optim_wraper", "'optim_wrapper'")),
    Case("loader_typo_option", options(train_dataloder__batch_size=4), launch.ConfigKeyError,
         ("train_dataloder", "'train_dataloader'")),
    Case("file_variable_option", options(data_root="/elsewhere"), launch.ConfigKeyError,
         ("data_root", "train_dataloader.dataset.dataset.data_root")),
    Case("lbp_value_option", options(lbp__lora_alpha="abc"), LBPConfigError, ("lbp.lora_alpha",)),
    Case("config_file_typo", config_file_typo, launch.ConfigKeyError, ("`lpb`", "'lbp'")),
    # -- checkpoint files -----------------------------------------------------------------------
    Case("ckpt_missing", lambda c: ck.load_checkpoint_file(c.root / "nope.pth"),
         ck.CheckpointNotFoundError, ("nope.pth",)),
    Case("ckpt_empty", load_file("empty.pth", b""), ck.CheckpointLoadError,
         ("empty.pth", "empty (0 bytes)")),
    Case("ckpt_truncated", truncated, ck.CheckpointLoadError, ("truncated.pth", "truncated")),
    Case("ckpt_corrupt_middle", corrupt_middle, ck.CheckpointLoadError, ("corrupt.pth",)),
    Case("ckpt_text", load_file("notes.pth", "these are not weights\n"), ck.CheckpointLoadError,
         ("notes.pth", "not a PyTorch checkpoint")),
    Case("ckpt_html", load_file("page.pth", "<html><body>404</body></html>"),
         ck.CheckpointLoadError, ("page.pth",)),
    Case("ckpt_random_bytes", load_file("noise.pth", bytes(range(256)) * 64),
         ck.CheckpointLoadError, ("noise.pth",)),
    Case("ckpt_directory", lambda c: ck.load_checkpoint_file(c.root), ck.CheckpointLoadError,
         ("is a directory",)),
    Case("ckpt_malicious_legacy",
         load_file("legacy.pth", pickle.dumps({"x": _Evil()}, protocol=2)),
         ck.UnsafeCheckpointError, ("legacy.pth", "(print)")),
    Case("ckpt_malicious_zip", load_file("evil.pth", obj={"x": _Evil()}),
         ck.UnsafeCheckpointError, ("evil.pth", "(print)", "allowlist")),
    # -- load_from that does not fit -------------------------------------------------------------
    Case("load_from_no_tensor_fits", load_from(prefixed, "prefixed.pth"),
         rn.CheckpointMismatchError, ("prefixed.pth", "none of its", "model.backbone")),
    Case("load_from_nan", load_from(with_nan, "nan.pth"), rn.NonFiniteCheckpointError,
         ("nan.pth", "backbone.network.3.1.mlp.fc1.weight")),
    Case("load_from_a_list", load_from(lambda c: [torch.ones(2)], "list.pth"),
         rn.CheckpointMismatchError, ("list.pth", "no state_dict")),
    Case("load_from_wrong_shapes",
         load_from(lambda c: {"state_dict": {k: v[..., :1] if v.ndim else v
                                             for k, v in c.state.items()}}, "shapes.pth"),
         rn.CheckpointMismatchError, ("shapes.pth", "shape mismatch")),
    # -- --resume ---------------------------------------------------------------------------------
    Case("resume_other_r", resume_with("lbp.r=6"), rn.ResumeMismatchError,
         ("iter_2.pth", "lbp.r: checkpoint 4, now 6")),
    Case("resume_other_method", resume_with("lbp.method=lora_all"), rn.ResumeMismatchError,
         ('lbp.method: checkpoint "lbp_wht", now "lora_all"',)),
    Case("resume_other_batch", resume_with("train_dataloader.batch_size=4"),
         rn.ResumeMismatchError, ("train_dataloader.batch_size: checkpoint 8, now 4",)),
    Case("resume_other_lr", resume_with("optim_wrapper.optimizer.lr=0.5"),
         rn.ResumeMismatchError, ("optim_wrapper.optimizer.lr",)),
    Case("resume_plain_state_dict", lambda c: c.runner.resume(
        str(c.file("plain.pth", obj={"state_dict": c.state}))), ck.CheckpointLoadError,
         ("plain.pth", "not a training checkpoint", "load_from=")),
    Case("resume_nan", resume_with(ckpt=nan_training_ckpt), rn.NonFiniteCheckpointError,
         ("nan_train.pth", "--resume")),
    Case("resume_nothing_loadable", all_unreadable, ck.CheckpointLoadError,
         ("iter_2.pth", "No loadable checkpoint", "iter_2.pth.unreadable")),
    # -- dataset files ----------------------------------------------------------------------------
    Case("idx_gzip_cut", lambda c: idx_file(c, "cut_gz", lambda b: b[: len(b) // 2]),
         ds.DatasetFileError, ("train-images-idx3-ubyte.gz", "truncated")),
    Case("idx_short_data", lambda c: idx_file(c, "short", lambda b: b[:-100]),
         ds.DatasetFileError, ("train-images-idx3-ubyte.gz", "header says")),
    Case("idx_bad_header", lambda c: idx_file(c, "header", lambda b: b"\1\2\3\4" + b[4:]),
         ds.DatasetFileError, ("train-images-idx3-ubyte.gz", "not a 3-d uint8 idx file")),
    # -- missing inputs, all at once --------------------------------------------------------------
    Case("missing_ckpt_and_data",
         inputs(*[f"{k}.dataset.dataset.data_root=/no/fmnist"
                  for k in ("train_dataloader", "val_dataloader")], load_from="gone.pth"),
         ds.MissingInputsError, ("gone.pth", "/no/fmnist", "train_dataloader", "val_dataloader")),
    Case("missing_data_only", inputs("train_dataloader.dataset.dataset.data_root=/no/fm"),
         ds.DatasetNotFoundError, ("/no/fm", "dataset-fashion-mnist")),
    Case("empty_load_from", inputs(load_from="EMPTY"), ds.MissingInputsError,
         ("empty_for_inputs.pth", "empty (0 bytes)")),
    Case("no_weights", inputs("lbp.allow_random_init=False"), ds.MissingInputsError,
         ("load_from is None", "lbp.allow_random_init=True")),
    Case("no_weights_runner", lambda c: make_runner(
        c.cfg("lbp.allow_random_init=False", work="nw")).train(), rn.NoWeightsError,
         ("load_from is None",)),
    # -- work dir, non-finite values, saving --------------------------------------------------------
    Case("fresh_start_over_complete_run", complete_record, launch.WorkDirHasRunError,
         ("done", "complete run", "--resume")),
    Case("fresh_start_over_interrupted_run", interrupted_run, launch.WorkDirHasRunError,
         ("interrupted", "record status 'interrupted'", "iter_2.pth", "--resume")),
    Case("work_dir_read_only", work_dir_fault(errno.EROFS), launch.WorkDirError,
         ("fault_EROFS/run", "Read-only file system")),
    Case("work_dir_disk_full", work_dir_fault(errno.ENOSPC), launch.WorkDirError,
         ("fault_ENOSPC/run", "No space left on device", "disk is full")),
    # -- the model the config builds, the adapters a checkpoint holds -----------------------------
    Case("lbp_model_names_another_model", another_model, rn.ModelMismatchError,
         ("lbp.model='efficientformer-l1'", "backbone tensors differ", "wrong model")),
    Case("lbp_model_variant_of_another_type", variant_of_another_type, rn.ModelMismatchError,
         ("variant 'smaller'", "SwinTransformerV2Convertible", "set lbp.model")),
    Case("test_drops_the_checkpoints_adapters", run_test_of(MINI_CLS, lora_checkpoint, "t_drop"),
         rn.CheckpointMismatchError, ("lora.pth", "lora_A", "would be dropped")),
    Case("test_without_the_models_adapters", run_test_of(MINI_LORA, plain_checkpoint, "t_none"),
         rn.CheckpointMismatchError, ("plain_state.pth", "untrained adapters")),
    Case("test_without_the_head", run_test_of(MINI_CLS, headless_checkpoint, "t_head"),
         rn.CheckpointMismatchError,
         ("no_head.pth", "missing in checkpoint", "head.", "at their initialisation")),
    Case("test_with_another_config_than_trained", another_r_tested,
         rn.CheckpointMismatchError, ("iter_2.pth", "another method, model or task", "lbp.r:")),
    Case("resume_checkpoint_without_config", resume_no_config, rn.ResumeMismatchError,
         ("no_cfg.pth", "holds no config", "--resume-unchecked")),
    # -- labels and records -------------------------------------------------------------------------
    Case("labels_beyond_the_classes", lambda c: labels_beyond_classes(c, wrapped=False),
         ds.DatasetFileError, ("label 10", "10 classes", "train-labels-idx1-ubyte.gz")),
    Case("labels_beyond_the_classes_subset", lambda c: labels_beyond_classes(c, wrapped=True),
         ds.DatasetFileError, ("label 10", "10 classes")),
    Case("record_nan_value", record_with(status="complete", metric="acc", value=float("nan")),
         records.RecordError, ("record.json", "nan", "not a finite number")),
    Case("record_text_metric",
         built_record_with({"accuracy/top1": 81.0, "single-label/f1": "n/a"}),
         records.RecordError, ("'single-label/f1'", "'n/a'", "not a finite number")),
    Case("record_inf_metric", built_record_with({"accuracy/top1": float("inf")}),
         records.RecordError, ("inf", "not a finite number")),
    Case("nan_loss", nonfinite_loss, NonFiniteLossError, ("iteration 5 of 10", "ckpt/nan.pth")),
    Case("nan_metric", nonfinite_metric, NonFiniteMetricError, ("accuracy/top1",)),
    Case("save_into_missing_dir", save_into_missing_dir, ck.CheckpointSaveError,
         ("no_such_dir/iter_2.pth",)),
    Case("disk_full", disk_full, ck.CheckpointSaveError,
         ("iter_8.pth", "No space left on device", "/w/iter_6.pth is intact")),
]  # fmt: skip


def test_catalogue_size():
    assert len(CASES) >= 35 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx: Ctx):
    with pytest.raises(BaseException) as info:
        case.run(ctx)
    err = info.value
    assert type(err) is case.error, f"{type(err).__name__}: {err}"
    msg = str(err)
    for name in case.names:
        assert name in msg, f"{name!r} not in: {msg}"
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg


# ---------------------------------------------------------------------------------------------
# through the tools: refused before anything is built
# ---------------------------------------------------------------------------------------------
def test_train_reports_all_missing_inputs_at_once_and_fast(tmp_path):
    opts = cls_options(str(tmp_path / "no_data"), iters=1) + ["load_from=/no/ckpt.pth"]
    t0 = time.time()
    proc = tool("tools/train.py", str(MINI_CLS), "--work-dir", str(tmp_path / "w"),
                "--cfg-options", *opts)  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr
    assert "/no/ckpt.pth" in err and str(tmp_path / "no_data") in err
    assert "train_dataloader" in err and "val_dataloader" in err
    assert len(proc.stdout.splitlines()) < 5 and not (tmp_path / "w").exists()
    assert time.time() - t0 < 60  # no runner, no model, no dataloader was built


def test_test_tool_names_a_truncated_checkpoint(tmp_path):
    data = write_mini_data(tmp_path / "data", n_train=8, n_test=4)
    bad = tmp_path / "cut.pth"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:500])
    proc = tool("tools/test.py", str(MINI_CLS), str(bad), "--work-dir", str(tmp_path / "w"),
                "--cfg-options", f"test_dataloader.dataset.dataset.data_root={data}")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: CheckpointLoadError: cannot load checkpoint {bad}" in proc.stderr
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr
    assert (ROOT / "tools/test.py").exists()


# ---------------------------------------------------------------------------------------------
# every entry point: bad input is one named error and exit 2, before anything starts
# ---------------------------------------------------------------------------------------------
SWEEP = ("tools/sweep.py", "grid")
#: id -> (tool arguments, the error's name, what the message names); ``{x}`` are filled in by
#: :func:`test_entry_points_refuse_bad_input`.
ENTRY_CASES = {
    "train_syntax": (("tools/train.py", "{syntax}", "--work-dir", "{w}"), "ConfigFileError",
                     ("syntax.py", "never closed")),
    "test_syntax": (("tools/test.py", "{syntax}", "{ckpt}", "--work-dir", "{w}"),
                    "ConfigFileError", ("syntax.py", "never closed")),
    "sweep_syntax": ((*SWEEP, "{syntax}", "--work-root", "{w}"), "ConfigFileError",
                     ("syntax.py",)),
    "slurm_syntax": ((*SWEEP, "{syntax}", "--work-root", "{w}", "--launcher", "slurm",
                      "--dry-run"), "ConfigFileError", ("syntax.py",)),
    "train_no_base": (("tools/train.py", "{nobase}", "--work-dir", "{w}"), "ConfigFileError",
                      ("nobase.py", "gone.py", "_base_")),
    "test_no_base": (("tools/test.py", "{nobase}", "{ckpt}", "--work-dir", "{w}"),
                     "ConfigFileError", ("nobase.py", "gone.py")),
    "train_seed_negative": (("tools/train.py", "{mini}", "--work-dir", "{w}", "--seed", "-1"),
                            "--seed", ("seed -1", "2**32 - 1")),
    "train_seed_too_big": (("tools/train.py", "{mini}", "--work-dir", "{w}", "--seed",
                            str(2**40)), "--seed", (str(2**40),)),
    "sweep_seed_negative": ((*SWEEP, "{mini}", "--work-root", "{w}", "--seeds", "-3"),
                            "--seeds", ("seed -3",)),
    "train_batch_zero": (("tools/train.py", "{mini}", "--work-dir", "{w}", "--cfg-options",
                          "train_dataloader.batch_size=0"), "ConfigKeyError",
                         ("train_dataloader.batch_size=0",)),
    "train_batch_text": (("tools/train.py", "{mini}", "--work-dir", "{w}", "--cfg-options",
                          "train_dataloader.batch_size=many"), "ConfigKeyError",
                         ("train_dataloader.batch_size='many'",)),
    "train_loop_key_typo": (("tools/train.py", "{mini}", "--work-dir", "{w}", "--cfg-options",
                             "train_cfg.max_iter=5"), "ConfigKeyError",
                            ("the config does not build", "max_iter")),
    "train_lr_text": (("tools/train.py", "{mini}", "--work-dir", "{w}", "--cfg-options",
                       "optim_wrapper.optimizer.lr=abc"), "ConfigKeyError",
                      ("the config does not build",)),
    "test_batch_zero": (("tools/test.py", "{mini}", "{ckpt}", "--work-dir", "{w}",
                         "--cfg-options", "test_dataloader.batch_size=0"), "ConfigKeyError",
                        ("test_dataloader.batch_size=0",)),
    "sweep_duplicate_seeds": ((*SWEEP, "{mini}", "--work-root", "{w}", "--seeds", "0", "0"),
                              "SweepSpecError", ("--seeds 0 0", "twice")),
    "table_duplicate_seeds": (("tools/sweep.py", "table", "4", "--work-root", "{w}", "--seeds",
                               "1", "1", "--dry-run"), "SweepSpecError", ("--seeds 1 1",)),
    "sweep_name_too_long": ((*SWEEP, "{mini}", "--work-root", "{w}", "--name", "n" * 250),
                            "ValueError", ("at most 200", "--name")),
    "train_work_dir_too_long": (("tools/train.py", "{mini}", "--work-dir", "{w}/" + "d" * 300),
                                "WorkDirError", ("File name too long",)),
    "sweep_work_root_not_writable": ((*SWEEP, "{mini}", "--work-root", "{notdir}/root"),
                                     "SweepSpecError", ("cannot be written", "Not a directory")),
    "test_work_dir_not_writable": (("tools/test.py", "{mini}", "{ckpt}", "--work-dir",
                                    "{notdir}/w"), "WorkDirError", ("Not a directory",)),
    "train_lbp_model_of_another_model": (("tools/train.py", "{mini}", "--work-dir", "{w}",
                                          "--cfg-options", "lbp.model=efficientformer-l1"),
                                         "ModelMismatchError", ("efficientformer-l1",)),
    "test_drops_the_checkpoints_adapters": (("tools/test.py", "{mini}", "{lora}", "--work-dir",
                                             "{w}"), "CheckpointMismatchError",
                                            ("lora.pth", "would be dropped")),
    # (h) a backbone init_cfg loads with mmengine's own torch.load: torch's message (which
    # suggests weights_only=False) must not reach the user
    "train_unsafe_pretrained_init": (("tools/train.py", "{unsafe_init}", "--work-dir", "{w}"),
                                     "UnsafeCheckpointError", ("argparse.Namespace",)),
}  # fmt: skip


@pytest.fixture(scope="module")
def entry(tmp_path_factory, ctx) -> dict[str, str]:
    root = tmp_path_factory.mktemp("entry")
    (root / "syntax.py").write_text(f"_base_ = ['{MINI_CLS}']\nx = (\n")
    (root / "nobase.py").write_text(f"_base_ = ['{root / 'gone.py'}']\n")
    (root / "notdir").write_text("a file, not a directory\n")
    import argparse

    torch.save({"state_dict": ctx.state, "args": argparse.Namespace(lr=1)}, root / "old.pth")
    (root / "unsafe_init.py").write_text(
        f"_base_ = ['{MINI_CLS}']\n"
        f"model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='{root / 'old.pth'}')))\n"
        "train_cfg = dict(max_iters=1, val_interval=1)\n"
        f"train_dataloader = dict(dataset=dict(dataset=dict(data_root='{ctx.data}')))\n"
        f"val_dataloader = dict(dataset=dict(dataset=dict(data_root='{ctx.data}')))\n"
    )  # fmt: skip
    return dict(syntax=str(root / "syntax.py"), nobase=str(root / "nobase.py"),
                mini=str(MINI_CLS), ckpt=str(ctx.train_ckpt), notdir=str(root / "notdir"),
                unsafe_init=str(root / "unsafe_init.py"), lora=str(lora_checkpoint(ctx)))  # fmt: skip


@pytest.mark.parametrize("case", ENTRY_CASES, ids=list(ENTRY_CASES))
def test_entry_points_refuse_bad_input(case, entry, tmp_path):
    args, error, names = ENTRY_CASES[case]
    work = tmp_path / "w"
    argv = [a.format(w=work, **entry) for a in args]
    proc = tool(*argv, timeout=300)
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}: {err[-3000:]}"
    assert "Traceback" not in err and "weights_only=False" not in err, err[-3000:]
    last = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert last and error in last[-1] or error in err, err[-2000:]
    assert all(n in err for n in names), (names, err[-2000:])
    assert not work.exists() or not any(work.rglob("*record.json"))  # nothing was started


def test_resume_unchecked_resumes_a_checkpoint_without_config(ctx: Ctx):
    """``--resume-unchecked`` (``runner.resume_unchecked``) is the way past the refusal above;
    the tool has the flag."""
    import importlib.util

    ckpt = torch.load(ctx.train_ckpt, map_location="cpu", weights_only=True)
    ckpt["meta"].pop("cfg")
    path = ctx.file("no_cfg_ok.pth", obj=ckpt)
    runner = make_runner(ctx.cfg(work="resume_unchecked"))
    runner.resume_unchecked = True
    runner.resume(str(path))
    assert runner.iter == 2
    spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools/train.py")
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    assert train_tool.parse_args([str(MINI_CLS), "--resume", "--resume-unchecked"]).resume_unchecked


def test_a_declared_model_variant_passes_the_model_check():
    """The demo pretrains a lighter mini EfficientFormer under the mini model's name: its
    lbp.model_variant says so, and the name check accepts it (without the declaration the
    lighter model is refused: its record would be filed as the full mini model's)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / "configs/mini/demo/source.py"))
    assert cfg.lbp.model_variant.startswith("demo size")
    rn._check_model_name(cfg)
    cfg.lbp.model_variant = None
    with pytest.raises(rn.ModelMismatchError, match="backbone tensors differ"):
        rn._check_model_name(cfg)


def test_work_root_probe_survives_sweeps_started_at_once(tmp_path):
    """Two sweeps started at once on one work root both check it can be written; neither may
    remove the other's probe file (a shared probe name failed the second sweep with
    "cannot be written" though the root was fine)."""
    import importlib.util
    import threading

    spec = importlib.util.spec_from_file_location("sweep_tool", ROOT / "tools/sweep.py")
    sweep_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep_tool)
    root, errors, start = str(tmp_path / "root"), [], threading.Barrier(4)

    def probe() -> None:
        start.wait()
        for _ in range(300):
            try:
                sweep_tool._writable(root)
            except Exception as err:  # noqa: BLE001  (collected: the assertion names it)
                errors.append(repr(err))
                return

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]
    assert os.listdir(root) == []  # no probe left behind


def test_a_test_loads_the_head_that_drop_keys_leaves_out_of_load_from(tmp_path):
    """``lbp.drop_keys`` (the demo's target config: ``head.*``) keeps a pretrained source's head
    out of ``load_from``; a test of the run's own checkpoint evaluates its trained head (it
    used to be dropped too: a random head's accuracy, recorded complete)."""
    c = Ctx(tmp_path)
    state = {k: v + 1.0 if k.startswith("head.") else v for k, v in c.state.items()}
    ckpt = c.file("trained.pth", obj={"state_dict": state, "meta": {}})
    cfg = load_cfg(MINI_CLS, cls_options(c.data, iters=2) + ["lbp.drop_keys=[head.*]"],
                   tmp_path / "t")  # fmt: skip
    cfg.load_from = str(ckpt)
    runner = make_runner(cfg)
    runner.test()
    got = runner.model.state_dict()
    heads = [k for k in state if k.startswith("head.")]
    assert heads and all(torch.equal(got[k], state[k]) for k in heads)


def test_a_test_with_the_training_config_passes_the_config_check(ctx):
    cfg = load_cfg(MINI_CLS, cls_options(ctx.data), ctx.root / "t_same")
    cfg.load_from = str(ctx.train_ckpt)
    metrics = make_runner(cfg).test()
    assert "accuracy/top1" in metrics
