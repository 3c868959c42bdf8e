"""Check experiment configs: parse, build with the method injected, one forward/backward.

For each config: ``Config.fromfile`` (custom imports, ``_base_`` merge), ``inject_lbp``, build
the model exactly as the Runner would (``LBPWHTModel``: convert + freeze + norm_eval), run one
training forward/backward on random input at the config's resolution, and check that

* exactly the trainable parameters receive gradients (a trainable parameter without a
  gradient would also break DDP without ``find_unused_parameters``), and
* the converted modules are exactly the ``nn.Linear`` / 1x1 ``nn.Conv2d`` that the preset's
  rules target.

Used by ``tools/check_configs.py`` (all configs or a covering subset) and the tests.
"""

from __future__ import annotations

import fnmatch
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lbp_wht.experiments.catalog import CONFIGS_DIR

__all__ = [
    "CheckResult",
    "build_model",
    "expected_conversions",
    "check_config",
    "all_configs",
    "REPRESENTATIVE",
    "representative",
]


@dataclass
class CheckResult:
    config: str
    ok: bool
    seconds: float = 0.0
    model: str = ""
    method: str = ""
    scope: str = ""
    input_shape: tuple = ()
    converted: dict = field(default_factory=dict)  # name -> new type
    trainable: list = field(default_factory=list)
    with_grad: list = field(default_factory=list)
    n_trainable: int = 0
    n_params: int = 0
    error: str = ""

    def summary(self) -> str:
        head = f"{'OK  ' if self.ok else 'FAIL'} {self.config}  ({self.seconds:.1f}s)"
        if not self.ok:
            return head + "\n      " + self.error.strip().replace("\n", "\n      ")
        counts: dict[str, int] = {}
        for t in self.converted.values():
            counts[t] = counts.get(t, 0) + 1
        conv = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "nothing"
        return (
            f"{head}\n      {self.model} / {self.method} / {self.scope}, input "
            f"{tuple(self.input_shape)}; converted: {conv}; trainable "
            f"{self.n_trainable:,}/{self.n_params:,} params in {len(self.trainable)} tensors"
        )


def _inputs(cfg, batch: int):
    """Random training inputs and data samples at the config's resolution."""
    import torch

    model_cfg = cfg.model.get("model", cfg.model)
    chans = int(model_cfg.get("backbone", {}).get("in_channels", 3))
    if cfg.get("default_scope") == "mmseg":
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        h, w = tuple(cfg.get("crop_size", (512, 512)))
        ncls = int(model_cfg["decode_head"]["num_classes"])
        samples = []
        for _ in range(batch):
            s = SegDataSample()
            s.gt_sem_seg = PixelData(data=torch.randint(0, ncls, (1, h, w)))
            s.set_metainfo(dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
            samples.append(s)
        return torch.randn(batch, chans, h, w), samples
    from mmpretrain.structures import DataSample

    size = int(cfg.get("img_size", 224))
    ncls = int(model_cfg["head"]["num_classes"])
    samples = [DataSample().set_gt_label(int(i) % ncls) for i in range(batch)]
    return torch.randn(batch, chans, size, size), samples


def build_model(cfg):
    """Build ``cfg.model`` (already injected) the way the Runner does."""
    import copy

    from mmengine.registry import MODELS, init_default_scope

    init_default_scope(cfg.get("default_scope", "mmengine"))
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get("data_preprocessor") is not None:
        model_cfg.setdefault("data_preprocessor", copy.deepcopy(cfg.data_preprocessor))
    return MODELS.build(model_cfg)


def expected_conversions(cfg, model) -> set[str]:
    """Names of the Linear / 1x1 Conv2d modules that the preset's rules target.

    Evaluated on the converted ``model``: converted layers subclass nn.Linear / nn.Conv2d and
    keep their names, so this is the set the rules select in the unconverted model.
    """
    import torch.nn as nn

    from lbp_wht.integrations.build import parse_lbp_block, preset_for_block

    preset = preset_for_block(parse_lbp_block(cfg.lbp))
    return {
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
        and any(fnmatch.fnmatchcase(name, rule["target"]) for rule in preset.rules)
    }


def check_config(
    path: str,
    cfg_options: dict | None = None,
    batch: int = 2,
    verify_rules: bool = True,
    verbose: bool = False,
) -> CheckResult:
    """Run the check on one config file (see the module docstring); never raises for a bad
    config: the result says what failed (``verbose``: also print the traceback)."""
    import torch
    from mmengine.config import Config

    from lbp_wht.integrations.build import inject_lbp, lbp_layers

    t0 = time.time()
    res = CheckResult(config=str(path), ok=False)
    try:
        cfg = Config.fromfile(str(path))
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        inject_lbp(cfg)
        lbp = cfg.lbp
        res.model, res.method, res.scope = lbp["model"], lbp["method"], lbp.get("scope", "partial")
        model = build_model(cfg)
        info = model.lbp_info
        res.converted = {r.name: r.new_type for r in info["report"].replaced}
        res.trainable = list(info["trainable"])
        res.n_params = sum(p.numel() for p in model.parameters())
        res.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if verify_rules:
            expected = expected_conversions(cfg, model)
            if expected != set(res.converted):
                raise AssertionError(
                    "converted modules differ from the preset's targets: missing "
                    f"{sorted(expected - set(res.converted))[:10]}, extra "
                    f"{sorted(set(res.converted) - expected)[:10]}"
                )
        spectrum_layer = info["cfg"]["spectrum_layer"]
        if spectrum_layer and spectrum_layer not in lbp_layers(model):
            raise AssertionError(f"lbp.spectrum_layer={spectrum_layer!r} is not an LBP layer")
        inputs, samples = _inputs(cfg, batch)
        res.input_shape = tuple(inputs.shape)
        model.train()
        # LHE layers profile (exact backprop) until their bases are set; check that path too.
        losses = model(inputs, samples, mode="loss")
        loss = sum(v.sum() for k, v in losses.items() if "loss" in k)
        loss.backward()
        res.with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
        missing = sorted(set(res.trainable) - set(res.with_grad))
        extra = sorted(set(res.with_grad) - set(res.trainable))
        if missing or extra:
            raise AssertionError(
                f"gradients do not match the trainable set: trainable without grad {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}; grad on frozen {extra[:10]}"
            )
        if not torch.isfinite(loss):
            raise AssertionError(f"non-finite loss {loss.item()}")
        bad_bn = [
            n
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
        ]
        if info["norm_eval"] and bad_bn:
            raise AssertionError(f"norm_eval set but BatchNorm trained in train mode: {bad_bn[:5]}")
        if lbp_layers(model) and not info["norm_eval"] and bad_bn:
            print(f"WARNING {path}: LBP layers train with BatchNorm in train mode")
        res.ok = True
    except Exception as err:  # report and go on to the next config
        res.error = "".join(traceback.format_exception_only(type(err), err))
        if verbose:
            traceback.print_exc()
    res.seconds = time.time() - t0
    return res


def all_configs(configs: Path = CONFIGS_DIR) -> list[Path]:
    """Every experiment config under ``configs`` (not the ``_base_`` files)."""
    return sorted(p for p in Path(configs).rglob("*.py") if "_base_" not in p.parts and p.is_file())


#: (folder, dataset, {scope: method tags}) of the covering subset: every model x method x
#: scope and every base selection at least once, on the smallest dataset of each table.
REPRESENTATIVE = {
    "table2": ("cifar10", {"partial": {"full-bp", "lora", "lora-all", "lp-l1-r4"}}),
    "table5": ("cifar10", {"full": {"lp-l1-r4"}}),
    "table3": (
        "cityscapes",
        {"partial": {"full-bp", "lora", "lora-all", "lp-l1-r4"}, "full": {"lp-l1-r4"}},
    ),
    "table4": ("cifar10", {"partial": {"lp-linf-r3", "lhe-rank10"}}),
    "table6": ("cifar10", {"partial": {"lp-l1-r4+lora-all"}}),
    "table7": ("places365", {"partial": {"lp-l1-r4"}}),
    "figure5": ("cifar100", {"partial": {"spectrum"}}),
}


def representative(configs: list[Path], root: Path = CONFIGS_DIR) -> list[Path]:
    """The covering subset of :data:`REPRESENTATIVE` plus every mini config (by file name:
    ``<model>_<scope>_<method>_<dataset>.py``)."""
    out = []
    for p in configs:
        rel = p.relative_to(root).as_posix()
        folder = rel.split("/", 1)[0]
        if folder == "mini":
            out.append(p)
            continue
        if folder not in REPRESENTATIVE:
            continue
        parts = p.stem.split("_")
        if len(parts) != 4:
            continue
        _, scope, tag, dataset = parts
        want_ds, tags = REPRESENTATIVE[folder]
        if dataset == want_ds and tag in tags.get(scope, ()):
            out.append(p)
    return sorted(out)
