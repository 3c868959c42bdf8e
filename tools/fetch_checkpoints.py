"""Download (and where needed convert) the pretrained checkpoints the paper's configs load.

    python tools/fetch_checkpoints.py --list
    python tools/fetch_checkpoints.py efficientformer-l1 swinv2-small-w8   # or: all
    python tools/fetch_checkpoints.py all --dir checkpoints --verify

Sources (Sec. 4.1: ImageNet-pretrained classifiers, ADE20K-pretrained Segformer):

* EfficientFormer-L1 / L7, SwinV2-Small w8 256 px: the OpenMMLab (mmpretrain) model zoo, the
  URLs of mmpretrain 1.2's ``configs/*/metafile.yml`` (the files are the original authors'
  weights converted by OpenMMLab). Keys already match the mmpretrain models; the 1000-class
  head (and EfficientFormer's distillation head) is left out at load time (``lbp.reinit_keys``).
* Segformer MiT-B0 ADE20K 512x512 160k: the mmseg model zoo (``configs/segformer/metafile.yaml``).
  Its ``nn.MultiheadAttention`` keys are split into q/k/v/proj when loading
  (``lbp_wht.integrations.models.mmseg_attention_keys_to_explicit``).
* EfficientFormerV2-S0 / L: timm's ``efficientformerv2_<arch>.snap_dist_in1k`` (Hugging Face
  hub, through ``timm.create_model(..., pretrained=True)``), re-keyed to this project's
  ``TimmEfficientFormerV2`` backbone (``backbone.timm_model.<timm key>``; timm's two
  classifier heads dropped) and saved as an mmengine-style checkpoint.

Files go to ``checkpoints/`` (the configs' ``load_from``). Downloads are checked against the
hash prefix in the file name where the zoo provides one. ``--verify`` builds each config's
model and checks that the file's keys match it (no missing backbone weights). This needs the
network; it is never run by the tests.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lbp_wht.integrations  # noqa: E402,F401  (CPU shims first)

MMPRETRAIN = "https://download.openmmlab.com/mmclassification/v0"
MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5"

#: name -> where it comes from, the file the configs load, a config to verify against
CHECKPOINTS: dict[str, dict[str, str]] = {
    "efficientformer-l1": dict(
        url=f"{MMPRETRAIN}/efficientformer/efficientformer-l1_3rdparty_in1k_20220915-cc3e1ac6.pth",
        file="efficientformer-l1_3rdparty_in1k_20220915-cc3e1ac6.pth",
        config="configs/table2/efficientformer-l1/efficientformer-l1_partial_full-bp_cifar10.py",
    ),
    "efficientformer-l7": dict(
        url=f"{MMPRETRAIN}/efficientformer/efficientformer-l7_3rdparty_in1k_20220915-185e30af.pth",
        file="efficientformer-l7_3rdparty_in1k_20220915-185e30af.pth",
        config="configs/table2/efficientformer-l7/efficientformer-l7_partial_full-bp_cifar10.py",
    ),
    "swinv2-small-w8": dict(
        url=f"{MMPRETRAIN}/swin-v2/swinv2-small-w8_3rdparty_in1k-256px_20220803-b01a4332.pth",
        file="swinv2-small-w8_3rdparty_in1k-256px_20220803-b01a4332.pth",
        config="configs/table2/swinv2-small-w8/swinv2-small-w8_partial_full-bp_cifar10.py",
    ),
    "segformer-mit-b0": dict(
        url=f"{MMSEG}/segformer/segformer_mit-b0_512x512_160k_ade20k/"
        "segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth",
        file="segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth",
        config="configs/table3/segformer-mit-b0_partial_full-bp_cityscapes.py",
    ),
    "efficientformerv2-s0": dict(
        timm="efficientformerv2_s0.snap_dist_in1k",
        file="efficientformerv2_s0_timm_in1k.pth",
        config="configs/table2/efficientformerv2-s0/efficientformerv2-s0_partial_full-bp_cifar10.py",
    ),
    "efficientformerv2-l": dict(
        timm="efficientformerv2_l.snap_dist_in1k",
        file="efficientformerv2_l_timm_in1k.pth",
        config="configs/table2/efficientformerv2-l/efficientformerv2-l_partial_full-bp_cifar10.py",
    ),
}


def _hash_prefix(filename: str) -> str | None:
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


def fetch(name: str, out_dir: str, force: bool = False) -> str:
    import torch

    spec = CHECKPOINTS[name]
    dst = osp.join(out_dir, spec["file"])
    if osp.exists(dst) and not force:
        print(f"{name}: {dst} exists")
        return dst
    os.makedirs(out_dir, exist_ok=True)
    if "url" in spec:
        print(f"{name}: downloading {spec['url']}")
        torch.hub.download_url_to_file(spec["url"], dst, hash_prefix=_hash_prefix(spec["file"]))
    else:
        import timm

        print(f"{name}: timm.create_model({spec['timm']!r}, pretrained=True)")
        model = timm.create_model(spec["timm"], pretrained=True)
        state = timm_to_backbone_state(model.state_dict())
        meta = dict(source=f"timm:{spec['timm']}", converted_by="tools/fetch_checkpoints.py")
        torch.save(dict(state_dict=state, meta=meta), dst)
    print(f"{name}: saved {dst}")
    return dst


def verify(name: str, path: str) -> bool:
    """Build the model of the checkpoint's config and compare keys (no training)."""
    import torch
    from mmengine.config import Config

    from lbp_wht.integrations.build import inject_lbp, validate_lbp_cfg
    from lbp_wht.integrations.runner import compare_state_dicts

    sys.path.insert(0, str(ROOT / "tools"))
    from check_configs import build_model

    cfg = Config.fromfile(str(ROOT / CHECKPOINTS[name]["config"]))
    inject_lbp(cfg)
    model = build_model(cfg)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    if any(".attn.attn.in_proj_" in k for k in state):
        from lbp_wht.integrations.models import mmseg_attention_keys_to_explicit

        state = mmseg_attention_keys_to_explicit(state)
    diff = compare_state_dicts(model.state_dict(), state, validate_lbp_cfg(cfg.lbp)["reinit_keys"])
    ok = not diff["missing"] and not diff["mismatched"]
    print(
        f"{name}: {'OK' if ok else 'MISMATCH'} missing={diff['missing'][:5]} "
        f"mismatched={diff['mismatched'][:5]} unexpected={diff['unexpected'][:5]} "
        f"re-initialised={len(diff['reinit'])}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", help=f"'all' or some of {sorted(CHECKPOINTS)}")
    p.add_argument("--dir", default=str(ROOT / "checkpoints"), help="where to put the files")
    p.add_argument("--force", action="store_true", help="download again")
    p.add_argument("--verify", action="store_true", help="check the keys against the model")
    p.add_argument("--list", action="store_true", help="print what is known and exit")
    args = p.parse_args(argv)
    if args.list or not args.names:
        for k, v in CHECKPOINTS.items():
            src = v.get("url") or f"timm {v['timm']}"
            print(f"{k:22s} {v['file']}\n{'':22s} <- {src}")
        return 0
    names = sorted(CHECKPOINTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in CHECKPOINTS]
    if unknown:
        p.error(f"unknown checkpoint(s) {unknown}; known: {sorted(CHECKPOINTS)}")
    ok = True
    for n in names:
        path = fetch(n, args.dir, args.force)
        if args.verify:
            ok &= verify(n, path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
