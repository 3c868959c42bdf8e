"""The pretrained checkpoints the paper's configs fine-tune from: where each comes from, the
file the configs load, and how to fetch and verify it (behind ``tools/fetch_checkpoints.py``).

Sources (Sec. 4.1: ImageNet-pretrained classifiers, ADE20K-pretrained Segformer):

* EfficientFormer-L1 / L7, SwinV2-Small w8 256 px: the OpenMMLab (mmpretrain) model zoo (the
  URLs of mmpretrain 1.2's ``configs/*/metafile.yml``; the original authors' weights converted
  by OpenMMLab). Keys match the mmpretrain models; the 1000-class head (and EfficientFormer's
  distillation head) is left out at load time (``lbp.reinit_keys``).
* Segformer MiT-B0 ADE20K 512x512 160k: the mmseg model zoo. Its ``nn.MultiheadAttention``
  keys are split into q/k/v/proj when loading
  (``lbp_wht.integrations.models.mmseg_attention_keys_to_explicit``).
* EfficientFormerV2-S0 / L: timm's ``efficientformerv2_<arch>.snap_dist_in1k`` (Hugging Face
  hub, through ``timm.create_model(..., pretrained=True)``), re-keyed to this project's
  ``TimmEfficientFormerV2`` backbone (``backbone.timm_model.<timm key>``; timm's two
  classifier heads dropped) and saved as an mmengine-style checkpoint.

Downloads are checked against the hash prefix in the file name where the zoo provides one.
Each model's checkpoint is its ``ModelSpec.checkpoint`` (``lbp_wht.experiments.models``);
fetching imports torch (and timm) when called.
"""

from __future__ import annotations

import os
import os.path as osp
from pathlib import Path

from .models import MODEL_SPECS, Checkpoint

__all__ = [
    "FetchError",
    "checkpoint",
    "verify_config",
    "hash_prefix",
    "timm_to_backbone_state",
    "fetch",
    "verify",
]


def checkpoint(model: str) -> Checkpoint:
    """The pretrained checkpoint of ``model`` (``ModelSpec.checkpoint``); KeyError for a model
    without one."""
    spec = MODEL_SPECS.get(model)
    if spec is None or spec.checkpoint is None:
        raise KeyError(model)
    return spec.checkpoint


def verify_config(model: str) -> str:
    """The config (relative to the repository) a model's checkpoint is verified against: its
    first partial-training Full BP config (Table 2 for classification, Table 3 for
    segmentation)."""
    if MODEL_SPECS[model].task == "seg":
        return f"configs/table3/{model}_partial_full-bp_cityscapes.py"
    return f"configs/table2/{model}/{model}_partial_full-bp_cifar10.py"


class FetchError(RuntimeError):
    """A checkpoint could not be fetched; the message names the source and what to do."""


def hash_prefix(filename: str) -> str | None:
    """The sha256 prefix OpenMMLab puts at the end of zoo file names (``..._<date>-<hash>.pth``)."""
    stem = osp.splitext(filename)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) == 8 and all(c in "0123456789abcdef" for c in tail) else None


def timm_to_backbone_state(state: dict) -> dict:
    """timm EfficientFormerV2 state dict -> keys of ``TimmEfficientFormerV2`` in an
    ``ImageClassifier`` (``backbone.timm_model.<key>``); timm's ``head`` / ``head_dist``
    classifiers are dropped (the backbone resets its classifier; the task head is new)."""
    return {
        f"backbone.timm_model.{k}": v
        for k, v in state.items()
        if not (k.startswith("head.") or k.startswith("head_dist.") or k.startswith("dist_head."))
    }


def _offline_advice(spec: Checkpoint, dst: str) -> str:
    where = spec.url or f"timm.create_model({spec.timm!r}, pretrained=True) (Hugging Face hub)"
    return (
        f"on a machine with network access, download {where} and copy it to {dst} "
        "(the directory is CKPT_DIR / --dir)"
    )


def fetch(name: str, out_dir: str | os.PathLike, force: bool = False, log=print) -> str:
    """Download (or convert) the checkpoint of model ``name`` into ``out_dir``; returns its
    path. An existing file is kept unless ``force``.

    Raises:
        KeyError: ``name`` has no checkpoint (:func:`checkpoint`).
        FetchError: the download or the timm hub failed (offline, HTTP error, hash
            mismatch); the message names the URL and where to put a file fetched elsewhere.
    """
    import urllib.error

    spec = checkpoint(name)
    dst = osp.join(os.fspath(out_dir), spec.file)
    if osp.exists(dst) and not force:
        log(f"{name}: {dst} exists")
        return dst
    os.makedirs(out_dir, exist_ok=True)
    try:
        import torch

        if spec.url:
            log(f"{name}: downloading {spec.url}")
            torch.hub.download_url_to_file(spec.url, dst, hash_prefix=hash_prefix(spec.file))
        else:
            import timm

            log(f"{name}: timm.create_model({spec.timm!r}, pretrained=True)")
            model = timm.create_model(spec.timm, pretrained=True)
            state = timm_to_backbone_state(model.state_dict())
            meta = dict(source=f"timm:{spec.timm}", converted_by="tools/fetch_checkpoints.py")
            torch.save(dict(state_dict=state, meta=meta), dst)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        reason = getattr(err, "reason", None) or err
        raise FetchError(
            f"{name}: could not fetch {spec.source} ({type(err).__name__}: {reason}); "
            + _offline_advice(spec, dst)
        ) from None
    log(f"{name}: saved {dst}")
    return dst


def verify(name: str, path: str | os.PathLike, repo_root: str | os.PathLike | None = None) -> dict:
    """Build the model of the checkpoint's config and compare its keys with the file's (no
    training). Returns ``compare_state_dicts``' dict (missing / mismatched / unexpected /
    reinit) plus ``ok``: no missing and no mismatched tensors."""
    import torch
    from mmengine.config import Config

    from lbp_wht.integrations.build import inject_lbp, validate_lbp_cfg
    from lbp_wht.integrations.config_check import build_model
    from lbp_wht.integrations.runner import compare_state_dicts

    from .catalog import REPO_ROOT

    root = Path(repo_root) if repo_root is not None else REPO_ROOT
    cfg = Config.fromfile(str(root / verify_config(name)))
    inject_lbp(cfg)
    model = build_model(cfg)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    if any(".attn.attn.in_proj_" in k for k in state):
        from lbp_wht.integrations.models import mmseg_attention_keys_to_explicit

        state = mmseg_attention_keys_to_explicit(state)
    diff = compare_state_dicts(model.state_dict(), state, validate_lbp_cfg(cfg.lbp)["reinit_keys"])
    diff["ok"] = not diff["missing"] and not diff["mismatched"]
    return diff
