"""``LBPWHTRunner``: mmengine's Runner plus the few things this project needs around it.

- ``from_cfg`` applies :func:`~lbp_wht.integrations.build.inject_lbp` to the config *after*
  ``--cfg-options`` were merged, so the model is converted at build time, before DDP wrapping
  and before the optimizer (see :mod:`.build` for why that ordering matters); the digest of that
  effective config (:func:`lbp_wht.records.config_digest`) goes into every run record.
- ``load_checkpoint`` (the ``load_from`` path) compares the checkpoint with the converted
  model and reports missing / unexpected / mismatched keys loudly: missing keys other than LoRA
  adapters are an error unless ``lbp.strict_load=False``; the classifier / segmentation head
  (``lbp.reinit_keys``) may differ in shape and is then left at its fresh initialisation. A
  checkpoint of which no tensor fits the model, or one holding NaN, is always an error.
- Checkpoints are saved durably (:mod:`.checkpoint`: temp file, fsync, ``os.replace``; the old
  one is deleted only after the new one is complete; ``CheckpointHook`` becomes
  :class:`~.checkpoint.DurableCheckpointHook`).
- Resuming: ``resume='auto'`` (``tools/train.py --resume``) takes the newest *loadable*
  checkpoint of the work dir; unreadable newer ones are named in a warning and moved aside
  (``<name>.unreadable``), never deleted. With no checkpoint yet it starts from ``load_from``.
  ``resume=<path>`` resumes that file. Either way the checkpoint's own config (its ``meta``)
  must agree with the current one on the method, model, training data and optimiser
  (:func:`resume_differences`), else :class:`ResumeMismatchError` lists the differences.
- ``train`` refuses ``load_from=None`` (a silent from-scratch run) unless
  ``lbp.allow_random_init=True``, and checks dataset paths before any dataloader is built.
- CPU distributed runs (``torchrun`` or ``srun`` + gloo, used by the tests): mmengine's
  ``init_dist`` calls ``torch.cuda.set_device`` and its DDP wrapper passes
  ``device_ids=[LOCAL_RANK]``, both of which fail without CUDA; both are handled here and are
  no-ops on GPU machines.

Every checkpoint is read by :func:`~.checkpoint.load_checkpoint_file`
(``torch.load(weights_only=True)`` with the project's allowlist, defined once in
:mod:`.checkpoint`); downloaded checkpoints are loaded under the same rules, never with the
weights-only loader turned off.
"""

from __future__ import annotations

import copy
import json
import os.path as osp
import re
import warnings
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.device import get_device
from mmengine.dist import is_distributed, is_main_process, master_only
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from lbp_wht.records import config_digest

# Importing the runner registers everything a config needs (builder, hooks, datasets), so
# configs list one module in custom_imports.
from . import hooks as _hooks  # noqa: F401
from . import recording as _recording  # noqa: F401
from .build import inject_lbp, validate_lbp_cfg
from .checkpoint import (
    CheckpointLoadError,
    CheckpointNotFoundError,
    _history_buffer_getattr,  # noqa: F401  (re-exported: the allowlist's getattr stand-in)
    allow_mmengine_checkpoint_globals,
    checkpoint_candidates,
    load_checkpoint_file,
    move_aside,
    read_last_checkpoint,
    save_durably,
)
from .datasets import check_dataloader_paths

__all__ = [
    "LBPWHTRunner",
    "CheckpointMismatchError",
    "NoWeightsError",
    "NonFiniteCheckpointError",
    "ResumeMismatchError",
    "allow_mmengine_checkpoint_globals",
    "compare_state_dicts",
    "resume_differences",
]


# ---------------------------------------------------------------------------------------------
# checkpoint comparison
# ---------------------------------------------------------------------------------------------
class CheckpointMismatchError(RuntimeError):
    """``load_from`` does not fit the model (missing or mis-shaped non-head weights)."""


class NonFiniteCheckpointError(ValueError):
    """A checkpoint holds NaN weights (training on it gives NaN losses throughout)."""


class NoWeightsError(RuntimeError):
    """``load_from=None`` and nothing to resume, without ``lbp.allow_random_init=True``."""


NO_WEIGHTS_MESSAGE = (
    "load_from is None (and nothing to resume): this run would fine-tune a randomly initialised "
    "model. Set load_from to the pretrained checkpoint (tools/fetch_checkpoints.py, "
    "data/README.md 'Pretrained checkpoints'), or set lbp.allow_random_init=True if that is "
    "intended."
)


class ResumeMismatchError(RuntimeError):
    """``--resume`` with a config that differs from the one the checkpoint was trained with."""


# LoRA adapters and LoSA's side network (``losa.*``) are added to the plain model.
_ADAPTER_RE = re.compile(r"(^|\.)lora_[AB]$|^losa\.")


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


def _nan_tensors(state: Mapping[str, Any]) -> list[str]:
    return [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and bool(torch.isnan(v).any())
    ]


# ---------------------------------------------------------------------------------------------
# resume compatibility
# ---------------------------------------------------------------------------------------------
#: ``lbp`` keys that only steer loading or recording: they may change on resume.
_LBP_FREE_ON_RESUME = frozenset(
    {"allow_random_init", "strict_load", "reinit_keys", "drop_keys", "spectrum_layer"}
    | {"spectrum_iters"}
)
#: Dataloader / dataset keys that say where or how fast data is read, not what is read.
_DATA_LOCATION_KEYS = frozenset(
    {"data_root", "data_prefix", "ann_file", "num_workers", "persistent_workers", "pin_memory"}
    | {"prefetch_factor"}
)


def _plain(obj: Any, drop: frozenset[str] = frozenset()) -> Any:
    """Config value as plain JSON-able data (tuples as lists), without the keys in ``drop``."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, drop) for v in obj]
    return obj


def _flatten(obj: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}", out)
    else:
        out[prefix] = json.dumps(obj, sort_keys=True, default=repr)


def resume_relevant(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The parts of a (runner) config that a resumed run must share with its checkpoint.

    Flattened to ``dotted.key -> JSON value``: the ``lbp`` block (validated, defaults filled;
    loading-only keys left out), the model, the data preprocessor, the training data (batch
    size, dataset, pipeline, sampler; not the data location), the optimiser wrapper and the
    kinds of the parameter schedulers. Not compared: the schedule length (``train_cfg``,
    scheduler bounds), so a resumed run may be extended.
    """
    model = _plain(cfg.get("model") or {})
    lbp = model.pop("lbp", None) if model.get("type") == "LBPWHTModel" else None
    if model.get("type") == "LBPWHTModel":
        model = model.get("model", {})
    lbp = validate_lbp_cfg(cfg.get("lbp") if cfg.get("lbp") is not None else lbp)
    scheds = cfg.get("param_scheduler") or []
    scheds = [scheds] if isinstance(scheds, Mapping) else list(scheds)
    parts = {
        "lbp": {k: _plain(v) for k, v in lbp.items() if k not in _LBP_FREE_ON_RESUME},
        "model": model,
        "data_preprocessor": _plain(cfg.get("data_preprocessor")),
        "train_dataloader": _plain(cfg.get("train_dataloader"), _DATA_LOCATION_KEYS),
        "optim_wrapper": _plain(cfg.get("optim_wrapper")),
        "param_scheduler": [s.get("type") if isinstance(s, Mapping) else s for s in scheds],
    }
    out: dict[str, str] = {}
    for name, value in parts.items():
        _flatten(value, name, out)
    return out


def resume_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: checkpoint X, now Y"`` for every :func:`resume_relevant` key that differs."""
    a, b = resume_relevant(saved), resume_relevant(current)
    unset = "<not set>"
    return [
        f"{k}: checkpoint {a.get(k, unset)}, now {b.get(k, unset)}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
def _torch_env_from_slurm() -> None:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` (the first node of the job) and
    ``MASTER_PORT`` (kept if set, else 29500) from the variables ``srun`` gives each process."""
    import os
    import subprocess

    env = os.environ
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        nodes = subprocess.run(
            ["scontrol", "show", "hostnames", env["SLURM_NODELIST"]],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        env["MASTER_ADDR"] = nodes.stdout.split()[0]
    env.setdefault("MASTER_PORT", "29500")


@RUNNERS.register_module()
class LBPWHTRunner(Runner):
    """mmengine ``Runner`` for configs with an ``lbp`` block (see module docstring)."""

    #: digest of the effective config as given to :meth:`from_cfg` (before the injection)
    config_digest: str | None = None

    @classmethod
    def from_cfg(cls, cfg: Any) -> LBPWHTRunner:
        digest = config_digest(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
        cfg = copy.deepcopy(cfg)
        inject_lbp(cfg)
        runner = super().from_cfg(cfg)
        runner.config_digest = digest
        return runner  # type: ignore[return-value]

    def register_default_hooks(self, hooks: dict | None = None) -> None:
        # Durable saves: mmengine's CheckpointHook deletes the old checkpoint before it writes
        # the new one (see .checkpoint); replace it by the hook that writes first.
        hooks = dict(hooks or {})
        ckpt = hooks.get("checkpoint", dict(type="CheckpointHook", interval=1))
        if isinstance(ckpt, dict) and ckpt.get("type") in ("CheckpointHook", None):
            hooks["checkpoint"] = {**ckpt, "type": "DurableCheckpointHook"}
        super().register_default_hooks(hooks)

    def register_custom_hooks(self, hooks: list) -> None:
        hooks = list(hooks or [])
        types = {h.get("type") if isinstance(h, dict) else type(h).__name__ for h in hooks}
        if "NonFiniteGuardHook" not in types:  # a NaN / Inf loss or metric fails the run
            hooks.append(dict(type="NonFiniteGuardHook"))
        super().register_custom_hooks(hooks)

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
            # (env:// rendezvous from torchrun's RANK / WORLD_SIZE / MASTER_ADDR variables, or
            # the same variables from srun's, as mmengine's slurm set-up derives them).
            if self._launcher == "slurm":
                _torch_env_from_slurm()
            elif self._launcher != "pytorch":
                raise RuntimeError(
                    "CPU distributed training is supported with launcher='pytorch' (torchrun) "
                    f"or 'slurm' (srun), got launcher={self._launcher!r}"
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
    @property
    def resume_path(self) -> str | None:
        """The checkpoint an explicit resume names (``resume=<path>`` or mmengine's
        ``resume=True`` with ``load_from``); None for ``resume='auto'`` or no resume."""
        mode = self._resume
        if isinstance(mode, str) and mode and mode != "auto":
            return mode
        if mode is True and self._load_from is not None:
            return self._load_from
        return None

    @property
    def auto_resume(self) -> bool:
        """Resume from the newest loadable checkpoint of the work dir, if there is one."""
        return self._resume == "auto" or (self._resume is True and self._load_from is None)

    def train(self) -> torch.nn.Module:
        lbp = self.lbp_cfg
        no_weights = (
            self._load_from is None
            and self.resume_path is None
            and not (self.auto_resume and checkpoint_candidates(self.work_dir))
        )
        if no_weights and not lbp["allow_random_init"]:
            raise NoWeightsError(NO_WEIGHTS_MESSAGE)
        self._check_checkpoint_exists()
        check_dataloader_paths(
            {"train_dataloader": self._train_dataloader, "val_dataloader": self._val_dataloader}
        )
        return super().train()

    def _check_checkpoint_exists(self) -> None:
        for what, path in (("resume", self.resume_path), ("load_from", self._load_from)):
            if path and "://" not in str(path) and not osp.exists(path):
                raise CheckpointNotFoundError(
                    f"{what}={path!r} does not exist. Pretrained checkpoints: "
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

    # ---- checkpoints: saving ----------------------------------------------------------------
    @master_only
    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args: dict | None = None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: dict | None = None,
        by_epoch: bool = True,
        backend_args: dict | None = None,
    ) -> None:
        """mmengine's ``save_checkpoint``, written durably to local directories
        (:func:`~.checkpoint.save_durably`); other back ends as mmengine writes them."""
        kwargs = dict(
            save_optimizer=save_optimizer,
            save_param_scheduler=save_param_scheduler,
            meta=meta,
            by_epoch=by_epoch,
        )
        if "://" in str(out_dir) or file_client_args is not None or backend_args is not None:
            super().save_checkpoint(
                out_dir, filename, file_client_args, backend_args=backend_args, **kwargs
            )
            return
        final = osp.join(out_dir, filename)
        intact = read_last_checkpoint(self.work_dir)

        def write(tmp: str) -> None:
            super(LBPWHTRunner, self).save_checkpoint(osp.dirname(tmp), osp.basename(tmp), **kwargs)

        save_durably(write, final, intact=intact if intact != final else None)

    # ---- checkpoints: loading and resuming ----------------------------------------------------
    def load_or_resume(self) -> None:
        """Load ``load_from`` or resume (see module docstring); mmengine's order otherwise."""
        if self._has_loaded:
            return
        if self.auto_resume:
            self._resume_newest_loadable()
        elif self.resume_path is not None:
            self.resume(self.resume_path)
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from)
        self._has_loaded = True

    def _resume_newest_loadable(self) -> None:
        skipped: list[tuple[str, Exception]] = []
        resumed = None
        for path in checkpoint_candidates(self.work_dir):
            try:
                self.resume(path)
            except (CheckpointLoadError, CheckpointNotFoundError) as err:
                skipped.append((path, err))
                continue
            resumed = path
            break
        pointer = read_last_checkpoint(self.work_dir)
        if pointer and not osp.exists(pointer):
            self.logger.warning(f"last_checkpoint names {pointer}, which does not exist")
        if skipped:
            lines = []
            for path, err in skipped:
                where = ""
                if is_main_process() and osp.exists(path):
                    where = f" (kept as {move_aside(path)})"
                lines.append(f"  {path}{where}: {str(err).split('. ')[0]}")
            msg = "--resume: skipped checkpoints that cannot be loaded:\n" + "\n".join(lines)
            if resumed is None:
                raise CheckpointLoadError(
                    f"{msg}\nNo loadable checkpoint is left in {self.work_dir}; start the run "
                    "over without --resume (or resume a copy with --resume PATH)."
                )
            msg += f"\nresumed from {resumed} instead"
            warnings.warn(msg, stacklevel=2)
            self.logger.warning(msg)
        elif resumed is None:
            self.logger.info(
                f"--resume: no checkpoint in {self.work_dir} yet; starting from "
                f"load_from={self._load_from}"
            )
            if self._load_from is not None:
                self.load_checkpoint(self._load_from)

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        self._lbp_resuming = True
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._lbp_resuming = False
        self.logger.info(f"resumed from {filename} at iteration {self.iter}")

    def load_checkpoint(
        self,
        filename: str,
        map_location: Any = "cpu",
        strict: bool = False,
        revise_keys: list | None = None,
    ) -> dict:
        revise_keys = [(r"^module\.", "")] if revise_keys is None else revise_keys
        checkpoint = load_checkpoint_file(filename, map_location=map_location)
        if getattr(self, "_lbp_resuming", False):
            return self._apply_training_checkpoint(filename, checkpoint, strict, revise_keys)
        return self._apply_pretrained_checkpoint(filename, checkpoint, revise_keys)

    def _apply_training_checkpoint(
        self, filename: str, checkpoint: Any, strict: bool, revise_keys: list
    ) -> dict:
        """A checkpoint of this run (resume): check it, then load it as mmengine does."""
        meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
        complete = isinstance(meta, dict) and {"iter", "epoch"} <= set(meta)
        if not complete or "state_dict" not in checkpoint or "message_hub" not in checkpoint:
            raise CheckpointLoadError(
                f"{filename} is not a training checkpoint of this pipeline (no meta / iteration "
                "count): --resume needs a checkpoint written by tools/train.py. To start a new run "
                f"from its weights, use --cfg-options load_from={filename} without --resume."
            )
        self._check_resume_config(filename, meta)
        nan = _nan_tensors(checkpoint["state_dict"])
        if nan:
            raise NonFiniteCheckpointError(
                f"--resume {filename}: the checkpoint holds NaN in {_fmt(nan, 5)} (training had "
                "diverged when it was saved). Resume an earlier checkpoint with --resume PATH."
            )
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        _load_checkpoint_to_model(self.unwrapped_model, checkpoint, strict, revise_keys=revise_keys)
        return checkpoint

    def _check_resume_config(self, filename: str, meta: dict) -> None:
        text = meta.get("cfg")
        if not isinstance(text, str):
            self.logger.warning(f"{filename} holds no config: cannot check that it fits this run")
            return
        from mmengine.config import Config

        try:
            saved = Config.fromstring(text, file_format=".py")
        except Exception as err:  # an unparsable dump: say so, do not block the resume
            self.logger.warning(f"cannot read the config stored in {filename} ({err!r})")
            return
        diffs = resume_differences(saved, self.cfg)
        if diffs:
            raise ResumeMismatchError(
                f"--resume {filename}: the checkpoint was trained with another configuration; "
                "resuming would mix the two. Differences:\n  "
                + "\n  ".join(diffs[:20])
                + (f"\n  ... ({len(diffs)} in all)" if len(diffs) > 20 else "")
                + "\nResume with the checkpoint's settings, or start a new run in another work "
                f"dir (to start from these weights: --cfg-options load_from={filename})."
            )

    def _apply_pretrained_checkpoint(
        self, filename: str, checkpoint: Any, revise_keys: list
    ) -> dict:
        """``load_from``: compare with the converted model, load what fits (module docstring)."""
        lbp = self.lbp_cfg
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise CheckpointMismatchError(f"{filename}: no state_dict found in the checkpoint")
        state = {k: v for k, v in state.items() if torch.is_tensor(v)}
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
                f"load_from {filename}: {len(diff['adapters'])} adapter tensors (LoRA / LoSA) "
                "are not in the checkpoint (expected for a checkpoint of the unconverted model; "
                "they keep their initialisation, lora_B = 0, LoSA's output projections = 0)",
                logger="current",
            )
        if diff["reinit"]:
            print_log(
                f"load_from {filename}: left at initialisation (lbp.reinit_keys): "
                f"{_fmt(diff['reinit'])}",
                logger="current",
                level=30,
            )
        skip = {k for k, *_ in diff["mismatched"]} | {
            item[0] if isinstance(item, tuple) else item for item in diff["reinit"]
        }
        loads = [k for k in state if k in own and k not in skip]
        if not loads:
            raise CheckpointMismatchError(
                f"load_from {filename}: none of its {len(state)} tensors fits the model "
                f"({type(model).__name__}, {len(own)} tensors), so nothing would be loaded. "
                f"The model expects keys like {_fmt(list(own), 3)}; the file has "
                f"{_fmt(list(state), 3) or 'no tensors'}. Is this the checkpoint for this model "
                "(tools/fetch_checkpoints.py), and do lbp.reinit_keys / lbp.drop_keys cover only "
                "the head?"
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
        nan = _nan_tensors({k: state[k] for k in loads})
        if nan:
            raise NonFiniteCheckpointError(
                f"load_from {filename}: the checkpoint holds NaN in {_fmt(nan, 5)}; training "
                "from it gives NaN losses throughout. Use another checkpoint."
            )
        model.load_state_dict({k: state[k] for k in loads}, strict=False)
        self._has_loaded = True
        print_log(
            f"Load checkpoint from {filename} ({len(loads)} of {len(own)} model tensors)",
            logger="current",
        )
        return checkpoint
