"""``LBPWHTRunner``: mmengine's Runner plus the few things this project needs around it.

- ``from_cfg`` applies :func:`~lbp_wht.integrations.build.inject_lbp` to the config *after*
  ``--cfg-options`` were merged, so the model is converted at build time, before DDP wrapping
  and before the optimizer (see :mod:`.build` for why that ordering matters).
- ``load_checkpoint`` (the ``load_from`` path) compares the checkpoint with the converted
  model and reports missing / unexpected / mismatched keys loudly: missing keys other than LoRA
  adapters are an error unless ``lbp.strict_load=False``; the classifier / segmentation head
  (``lbp.reinit_keys``) may differ in shape and is then left at its fresh initialisation.
- ``train`` refuses ``load_from=None`` (a silent from-scratch run) unless
  ``lbp.allow_random_init=True``, and checks dataset paths before any dataloader is built.
- CPU distributed runs (``torchrun`` + gloo, used by the tests): mmengine's ``init_dist`` calls
  ``torch.cuda.set_device`` and its DDP wrapper passes ``device_ids=[LOCAL_RANK]``, both of
  which fail without CUDA; both are handled here and are no-ops on GPU machines.

Checkpoints and ``torch.load(weights_only=True)``
-------------------------------------------------
torch >= 2.6 defaults to ``weights_only=True``; mmengine 0.10.7 calls ``torch.load`` without
choosing, and its training checkpoints hold a little more than tensors (the message hub's
``HistoryBuffer``, numpy arrays / dtypes / scalars, and ``getattr(HistoryBuffer, 'min')``-style
references to its statistics methods). This module is THE one place that decides: it allowlists
exactly those globals (:func:`allow_mmengine_checkpoint_globals`, applied on import) and keeps
``weights_only=True`` for every file. ``builtins.getattr`` is *not* allowlisted (that would
allow arbitrary code); a restricted stand-in pickled under that name only resolves
``HistoryBuffer`` statistics methods. Downloaded checkpoints are loaded under the same rules,
never with ``weights_only=False``.
"""

from __future__ import annotations

import copy
import os.path as osp
import re
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.device import get_device
from mmengine.dist import is_distributed
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint, find_latest_checkpoint

# Importing the runner registers everything a config needs (builder, hooks, datasets), so
# configs list one module in custom_imports.
from . import hooks as _hooks  # noqa: F401
from . import recording as _recording  # noqa: F401
from .build import inject_lbp, validate_lbp_cfg
from .datasets import check_dataloader_paths

__all__ = [
    "LBPWHTRunner",
    "CheckpointMismatchError",
    "allow_mmengine_checkpoint_globals",
    "compare_state_dicts",
]


# ---------------------------------------------------------------------------------------------
# torch.load allowlist (see module docstring)
# ---------------------------------------------------------------------------------------------
def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to what mmengine checkpoints need: HistoryBuffer statistics."""
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith("_"):
        if name in HistoryBuffer._statistics_methods or name in ("min", "max", "mean", "current"):
            return getattr(HistoryBuffer, name)
    raise torch.serialization.pickle.UnpicklingError(
        f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics "
        "methods are allowed (lbp_wht.integrations.runner)"
    )


def allow_mmengine_checkpoint_globals() -> None:
    """Allowlist the globals of mmengine training checkpoints for ``weights_only`` loading."""
    import numpy as np

    safe: list[Any] = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        (_history_buffer_getattr, "builtins.getattr"),
        (_history_buffer_getattr, "__builtin__.getattr"),
    ]
    core = getattr(np, "_core", None) or np.core
    safe += [core.multiarray._reconstruct, core.multiarray.scalar]
    # numpy 2 pickles dtypes as instances of numpy.dtypes.<Name>DType classes.
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        safe += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n[0].isupper()]
    torch.serialization.add_safe_globals(safe)


allow_mmengine_checkpoint_globals()


# ---------------------------------------------------------------------------------------------
# checkpoint comparison
# ---------------------------------------------------------------------------------------------
class CheckpointMismatchError(RuntimeError):
    """``load_from`` does not fit the model (missing or mis-shaped non-head weights)."""


_ADAPTER_RE = re.compile(r"(^|\.)lora_[AB]$")


def compare_state_dicts(
    model_state: dict[str, torch.Tensor],
    ckpt_state: dict[str, torch.Tensor],
    reinit_keys: tuple[str, ...] = (),
) -> dict[str, list]:
    """Classify the keys of a checkpoint against a model.

    Returns a dict of lists: ``missing`` / ``unexpected`` / ``mismatched`` (name, ckpt shape,
    model shape) — the problems — and ``adapters`` (LoRA ``lora_A`` / ``lora_B`` missing from a
    checkpoint of the unconverted model: expected) and ``reinit`` (keys matching
    ``reinit_keys`` that are missing, unexpected or mis-shaped: left at initialisation).
    """
    out: dict[str, list] = dict(missing=[], unexpected=[], mismatched=[], adapters=[], reinit=[])

    def is_reinit(k: str) -> bool:
        return any(fnmatchcase(k, p) for p in reinit_keys)

    for k, v in model_state.items():
        if k not in ckpt_state:
            if _ADAPTER_RE.search(k):
                out["adapters"].append(k)
            elif is_reinit(k):
                out["reinit"].append(k)
            else:
                out["missing"].append(k)
        elif tuple(ckpt_state[k].shape) != tuple(v.shape):
            item = (k, tuple(ckpt_state[k].shape), tuple(v.shape))
            (out["reinit"] if is_reinit(k) else out["mismatched"]).append(item)
    for k in ckpt_state:
        if k not in model_state:
            (out["reinit"] if is_reinit(k) else out["unexpected"]).append(k)
    return out


def _fmt(items: list, n: int = 12) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
@RUNNERS.register_module()
class LBPWHTRunner(Runner):
    """mmengine ``Runner`` for configs with an ``lbp`` block (see module docstring)."""

    @classmethod
    def from_cfg(cls, cfg: Any) -> LBPWHTRunner:
        cfg = copy.deepcopy(cfg)
        inject_lbp(cfg)
        return super().from_cfg(cfg)  # type: ignore[return-value]

    # ---- properties -------------------------------------------------------------------------
    @property
    def lbp_cfg(self) -> dict[str, Any]:
        """The validated ``lbp`` block of the config (defaults filled in)."""
        return validate_lbp_cfg(self.cfg.get("lbp"))

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.model.module if is_model_wrapper(self.model) else self.model

    # ---- environment: CPU distributed ---------------------------------------------------------
    def setup_env(self, env_cfg: dict) -> None:
        if self._distributed and not is_distributed() and not torch.cuda.is_available():
            # mmengine's init_dist would call torch.cuda.set_device; on CPU use gloo directly
            # (env:// rendezvous from torchrun's RANK / WORLD_SIZE / MASTER_ADDR variables).
            if self._launcher != "pytorch":
                raise RuntimeError(
                    f"CPU distributed training is supported with launcher='pytorch' (torchrun), "
                    f"got launcher={self._launcher!r}"
                )
            timeout = env_cfg.get("dist_cfg", {}).get("timeout", 1800)
            from datetime import timedelta

            torch_dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module) -> Any:
        if not (self.distributed and get_device() == "cpu"):
            return super().wrap_model(model_wrapper_cfg, model)
        # mmengine passes device_ids=[LOCAL_RANK], which DDP rejects for CPU modules.
        model = model.to("cpu")
        if model_wrapper_cfg is None:
            return MMDistributedDataParallel(
                module=model,
                device_ids=None,
                broadcast_buffers=False,
                find_unused_parameters=self.cfg.get("find_unused_parameters", False),
            )
        wrapper_cfg = dict(model_wrapper_cfg)
        wrapper_cfg.setdefault("type", "MMDistributedDataParallel")
        return MODEL_WRAPPERS.build(wrapper_cfg, default_args=dict(module=model, device_ids=None))

    # ---- entry points -------------------------------------------------------------------------
    def train(self) -> torch.nn.Module:
        lbp = self.lbp_cfg
        no_weights = self._load_from is None and (
            not self._resume or find_latest_checkpoint(self.work_dir) is None
        )
        if no_weights and not lbp["allow_random_init"]:
            raise RuntimeError(
                "load_from is None (and nothing to resume): this run would fine-tune a randomly "
                "initialised model. Set load_from to the pretrained checkpoint "
                "(tools/fetch_checkpoints.py, data/README.md 'Pretrained checkpoints'), or set "
                "lbp.allow_random_init=True if that is intended."
            )
        self._check_checkpoint_exists()
        check_dataloader_paths(
            {"train_dataloader": self._train_dataloader, "val_dataloader": self._val_dataloader}
        )
        return super().train()

    def _check_checkpoint_exists(self) -> None:
        path = self._load_from
        if path and "://" not in str(path) and not osp.exists(path):
            raise FileNotFoundError(
                f"load_from={path!r} does not exist. Pretrained checkpoints: "
                "`python tools/fetch_checkpoints.py --list` (and data/README.md); or point "
                "load_from at your file with --cfg-options load_from=PATH"
            )

    def val(self) -> dict:
        check_dataloader_paths({"val_dataloader": self._val_dataloader})
        return super().val()

    def test(self) -> dict:
        self._check_checkpoint_exists()
        check_dataloader_paths({"test_dataloader": self._test_dataloader})
        return super().test()

    # ---- checkpoints --------------------------------------------------------------------------
    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        self._lbp_resuming = True
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._lbp_resuming = False

    def load_checkpoint(
        self,
        filename: str,
        map_location: Any = "cpu",
        strict: bool = False,
        revise_keys: list | None = None,
    ) -> dict:
        revise_keys = [(r"^module\.", "")] if revise_keys is None else revise_keys
        if getattr(self, "_lbp_resuming", False):
            # Our own checkpoint of this very model: mmengine's loading is right as it is.
            return super().load_checkpoint(filename, map_location, strict, revise_keys)
        lbp = self.lbp_cfg
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise CheckpointMismatchError(f"{filename}: no state_dict found in the checkpoint")
        for pattern, repl in revise_keys:
            state = {re.sub(pattern, repl, k): v for k, v in state.items()}
        if any(".attn.attn.in_proj_" in k for k in state):
            # mmseg Segformer checkpoint into the explicit-projection attention (models.py)
            from .models import mmseg_attention_keys_to_explicit

            state = mmseg_attention_keys_to_explicit(state)
        dropped = [k for k in state if any(fnmatchcase(k, p) for p in lbp["drop_keys"])]
        if dropped:
            print_log(
                f"load_from {filename}: not loading {_fmt(dropped)} (lbp.drop_keys)",
                logger="current",
            )
            state = {k: v for k, v in state.items() if k not in set(dropped)}
        model = self.unwrapped_model
        own = model.state_dict()
        diff = compare_state_dicts(own, state, lbp["reinit_keys"] + lbp["drop_keys"])
        if diff["adapters"]:
            print_log(
                f"load_from {filename}: {len(diff['adapters'])} LoRA adapter tensors are not in "
                "the checkpoint (expected for a checkpoint of the unconverted model; they keep "
                "their LoRA initialisation, lora_B = 0)",
                logger="current",
            )
        if diff["reinit"]:
            print_log(
                f"load_from {filename}: left at initialisation (lbp.reinit_keys): "
                f"{_fmt(diff['reinit'])}",
                logger="current",
                level=30,
            )
        problems = []
        if diff["missing"]:
            problems.append(f"missing in checkpoint: {_fmt(diff['missing'])}")
        if diff["mismatched"]:
            problems.append(f"shape mismatch (key, ckpt, model): {_fmt(diff['mismatched'])}")
        if problems:
            msg = (
                f"load_from {filename} does not match the model ({type(model).__name__}): "
                + "; ".join(problems)
                + ". Is this the checkpoint for this model? (tools/fetch_checkpoints.py)"
            )
            if lbp["strict_load"]:
                raise CheckpointMismatchError(msg + " Set lbp.strict_load=False to load anyway.")
            print_log(msg, logger="current", level=40)
        if diff["unexpected"]:
            print_log(
                f"load_from {filename}: checkpoint keys not used by the model: "
                f"{_fmt(diff['unexpected'])}",
                logger="current",
                level=30,
            )
        skip = {k for k, *_ in diff["mismatched"]} | {
            item[0] if isinstance(item, tuple) else item for item in diff["reinit"]
        }
        model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
        self._has_loaded = True
        print_log(
            f"Load checkpoint from {filename} ({len(state) - len(skip)} tensors)", logger="current"
        )
        return checkpoint
