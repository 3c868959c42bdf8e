"""Save what an adaptation trained, with the conversion rules beside it; rebuild it later.

``save_adapted(model, "vit_lbp.pt")`` writes two files:

* ``vit_lbp.pt``: the *trainable-only* state dict (``torch.save`` of a dict of tensors: the
  parameters with ``requires_grad``, plus the LHE-chosen bases ``<layer>.lbp_bases``), loadable
  with ``torch.load(..., weights_only=True)``;
* ``vit_lbp.rules.json``: the conversion rules (canonical keys, see
  :mod:`lbp_wht.conversion`), the shapes of the example input the maps were traced on, the
  converted layers, the trainable parameter names, the tensor file's SHA-256 and the format
  version.

``load_adapted(fresh_base_model, "vit_lbp.pt")`` converts the fresh model with the saved rules
(tracing its maps on a zero example of the saved shapes), checks that the same layers were
converted and that the tensor file is the one the rules were written with, restores which
parameters train, and loads the tensors, so that it computes what the saved model computed. Buffers (e.g. BatchNorm running statistics) are not saved: with BatchNorm in
eval mode, as LBP-WHT needs, they do not change during adaptation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .conversion import ConversionReport, convert, example_from_spec
from .io import atomic_write
from .layers import BASES_KEY, ConvertedLayer
from .lora import LoRAMixin

__all__ = [
    "trainable_state_dict",
    "save_adapted",
    "load_adapted",
    "rules_path",
    "converted_names",
    "FORMAT",
]

FORMAT = "lbp_wht.adapted/1"


def rules_path(path: str | os.PathLike) -> Path:
    """``x/name.pt`` -> ``x/name.rules.json`` (where :func:`save_adapted` puts the rules)."""
    p = Path(path)
    return p.with_name(p.stem + ".rules.json")


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries of trainable parameters, plus LHE-chosen bases (``lbp_bases``) and
    the frozen random ``lora_A`` of LoRA-FA layers (a fresh conversion would draw another)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {
        f"{n}.lora_A"
        for n, m in model.named_modules()
        if isinstance(m, LoRAMixin) and "lora_A" in m.FROZEN
    }
    state = model.state_dict()
    return {
        k: v
        for k, v in state.items()
        if k in names or k == BASES_KEY or k.endswith("." + BASES_KEY)
    }


def save_adapted(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    rules: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Write the trainable state dict to ``path`` and the rules (``rules``, else those that
    :func:`lbp_wht.convert` recorded as ``model.lbp_rules``) to :func:`rules_path`.

    Returns ``(tensor file, rules file)``. Each is written to a temporary file and moved into
    place, so an interrupted save never leaves a truncated file under either name.
    """
    if rules is None:
        rules = getattr(model, "lbp_rules", None)
    if rules is None:
        raise ValueError(
            "save_adapted: the model records no conversion rules (was it converted with "
            "lbp_wht.convert?); pass rules=[...]"
        )
    if any(isinstance(m, LoRAMixin) and m.merged for m in model.modules()):
        raise ValueError(
            "save_adapted: some LoRA layers are merged; unmerge them (layer.unmerge()) first so "
            "that the saved adapters apply to the pure base weights"
        )
    path = Path(path)
    state = trainable_state_dict(model)
    meta = dict(
        format=FORMAT,
        rules=json.loads(json.dumps(rules)),  # fails here, not at load time, if not JSON
        example=getattr(model, "lbp_example", None),
        converted=converted_names(model),
        trainable=[n for n, p in model.named_parameters() if p.requires_grad],
        tensors=sorted(state),
        model=type(model).__qualname__,
    )
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    meta["tensors_sha256"] = _sha256(path)
    meta_path = rules_path(path)
    atomic_write(meta_path, json.dumps(meta, indent=1) + "\n")
    return path, meta_path


def converted_names(model: nn.Module) -> list[str]:
    """Qualified names of the converted layers of ``model``, sorted."""
    return sorted(n for n, m in model.named_modules() if isinstance(m, ConvertedLayer))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = rules_path(path)
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"load_adapted: {meta_path} not found; it is written by save_adapted beside {path}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"load_adapted: {meta_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"load_adapted: {meta_path} is not an lbp_wht rules file (format "
            f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}, "
            f"expected {FORMAT!r})"
        )
    return meta


def load_adapted(
    model: nn.Module, path: str | os.PathLike, *, map_location: Any = "cpu"
) -> ConversionReport:
    """Convert a fresh (unconverted) ``model`` with the rules saved beside ``path`` and load
    the saved tensors into it; returns the conversion report.

    Errors: a missing or foreign rules file, an already converted model, tensors that do not
    fit the converted model (name and shape), or a file that is not a plain dict of tensors
    (``torch.load`` runs with ``weights_only=True``: no pickled code is executed).
    """
    path = Path(path)
    meta = _read_meta(path)
    if any(isinstance(m, ConvertedLayer) for m in model.modules()):
        raise ValueError("load_adapted: the model is already converted; pass a fresh base model")
    if not path.is_file():
        raise FileNotFoundError(f"load_adapted: tensor file {path} not found")
    digest = meta.get("tensors_sha256")
    if digest is not None and digest != _sha256(path):
        raise ValueError(
            f"load_adapted: {path} is not the tensor file that {rules_path(path)} was written "
            "with (its SHA-256 differs: an interrupted or mixed-up save); save the adapted "
            "model again"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ValueError(f"load_adapted: cannot read {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"load_adapted: {path} does not hold a dict of tensors")
    spec, p = meta.get("example"), next(iter(model.parameters()), None)
    example = None if spec is None else example_from_spec(spec, None if p is None else p.device)
    report = convert(model, meta["rules"], example_input=example)
    saved = meta.get("converted")
    if saved is not None and converted_names(model) != saved:
        now = set(converted_names(model))
        raise ValueError(
            f"load_adapted: the fresh model converts differently from the saved one: "
            f"saved but not converted now {sorted(set(saved) - now)[:10]}, converted now but "
            f"not saved {sorted(now - set(saved))[:10]} (is this the same base architecture?)"
        )
    trainable = set(meta.get("trainable", []))
    params = dict(model.named_parameters())
    unknown = sorted(trainable - set(params))
    if unknown:
        raise ValueError(f"load_adapted: trainable parameters {unknown[:10]} are not in the model")
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    own = model.state_dict()
    extra = sorted(k for k in state if k not in own and not k.endswith(BASES_KEY))
    if extra:
        raise ValueError(
            f"load_adapted: {len(extra)} saved tensors do not exist in the converted model: "
            f"{extra[:10]} (is this the same base architecture?)"
        )
    model.load_state_dict(state, strict=False)
    return report
