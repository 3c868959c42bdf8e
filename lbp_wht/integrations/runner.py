"""``LBPWHTRunner``: mmengine's Runner plus what this project needs (docs/RUNNING.md).

It injects the method into the config and records the config's digest; refuses an
``lbp.model`` that is not the model built, a ``load_from`` that does not fit the converted model,
and a ``--resume`` of another configuration (or of a checkpoint holding no config, unless
``--resume-unchecked``); resumes from the newest *loadable* checkpoint (unreadable ones kept as
``<name>.unreadable``);
saves through :class:`~.checkpoint.DurableCheckpointHook`, fails on a NaN / Inf loss or metric
(:class:`~.recording.NonFiniteGuardHook`); runs CPU-distributed (gloo) without CUDA.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import warnings
from collections.abc import Mapping
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.device import get_device
from mmengine.dist import is_distributed, is_main_process
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS, MODELS, RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from lbp_wht.io import move_aside
from lbp_wht.runs.records import LOADING_LBP_KEYS, config_digest

# Importing the runner registers everything a config needs (builder, hooks, datasets).
from . import hooks as _hooks  # noqa: F401
from . import recording as _recording  # noqa: F401
from .build import inject_lbp, validate_lbp_cfg
from .checkpoint import (
    CheckpointLoadError,
    CheckpointNotFoundError,
    checkpoint_candidates,
    load_checkpoint_file,
    read_last_checkpoint,
)
from .datasets import check_dataloader_paths


class CheckpointMismatchError(RuntimeError):
    """``load_from`` does not fit the model (missing, mis-shaped or dropped weights)."""


class ModelMismatchError(ValueError):
    """``lbp.model`` names another model than the one the config builds."""


class NonFiniteCheckpointError(ValueError):
    """A checkpoint holds NaN weights (training on it gives NaN losses throughout)."""


class NoWeightsError(RuntimeError):
    """``load_from=None`` and nothing to resume, without ``lbp.allow_random_init=True``."""


class ResumeMismatchError(RuntimeError):
    """``--resume`` of a checkpoint whose config differs, or cannot be compared."""


NO_WEIGHTS_MESSAGE = (
    "load_from is None (and nothing to resume): this run would fine-tune a randomly initialised "
    "model. Set load_from to the pretrained checkpoint (tools/fetch_checkpoints.py, "
    "data/README.md 'Pretrained checkpoints'), or set lbp.allow_random_init=True if that is "
    "intended."
)
# LoRA adapters and LoSA's side network are added to the plain model.
_ADAPTER_RE = re.compile(r"(^|\.)lora_[AB]$|^losa\.")


def compare_state_dicts(
    model_state: Mapping[str, torch.Tensor],
    ckpt_state: Mapping[str, torch.Tensor],
    reinit_keys: tuple[str, ...] = (),
) -> dict[str, list]:
    """Keys of a checkpoint against a model: ``missing`` / ``unexpected`` / ``mismatched``
    (name, ckpt shape, model shape), ``adapters`` (LoRA / LoSA tensors the checkpoint lacks)
    and ``reinit`` (keys matching ``reinit_keys`` that do not fit: left at initialisation)."""
    out: dict[str, list] = dict(missing=[], unexpected=[], mismatched=[], adapters=[], reinit=[])
    reinit = lambda k: any(fnmatchcase(k, p) for p in reinit_keys)  # noqa: E731
    for k, v in model_state.items():
        if k not in ckpt_state:
            kind = "reinit" if reinit(k) else "missing"
            out["adapters" if _ADAPTER_RE.search(k) else kind].append(k)
        elif tuple(ckpt_state[k].shape) != tuple(v.shape):
            item = (k, tuple(ckpt_state[k].shape), tuple(v.shape))
            out["reinit" if reinit(k) else "mismatched"].append(item)
    for k in ckpt_state:
        if k not in model_state:
            out["reinit" if reinit(k) else "unexpected"].append(k)
    return out


def _fmt(items: list, n: int = 12) -> str:
    return ", ".join(str(i) for i in items[:n]) + (
        f", ... ({len(items)} in all)" if len(items) > n else ""
    )


def _nan_tensors(state: Mapping[str, Any]) -> list[str]:
    return [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and bool(torch.isnan(v).any())
    ]


# ------------------------------------------------------------------------ resume compatibility
#: Data keys that say where or how fast data is read: they may change on resume (as may
#: :data:`~lbp_wht.runs.records.LOADING_LBP_KEYS` and the schedule length).
_DATA_LOCATION = frozenset(
    "data_root data_prefix ann_file num_workers persistent_workers pin_memory prefetch_factor".split()
)


def _plain(obj: Any, drop: frozenset[str] = frozenset()) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, drop) for k, v in obj.items() if k not in drop}
    return [_plain(v, drop) for v in obj] if isinstance(obj, (list, tuple)) else obj


def resume_relevant(cfg: Mapping[str, Any]) -> dict[str, str]:
    """``dotted.key -> JSON`` of what a resumed run must share with its checkpoint: the ``lbp``
    block (loading-only keys out), model, data preprocessor, training data (not its location),
    optimiser wrapper and the kinds of the parameter schedulers."""
    model = _plain(cfg.get("model") or {})
    wrapped = model.get("type") == "LBPWHTModel"
    lbp = cfg.get("lbp")
    lbp = validate_lbp_cfg(model.get("lbp") if lbp is None and wrapped else lbp)
    scheds = cfg.get("param_scheduler") or []
    scheds = [scheds] if isinstance(scheds, Mapping) else scheds
    parts = {
        "lbp": {k: _plain(v) for k, v in lbp.items() if k not in LOADING_LBP_KEYS},
        "model": model.get("model", {}) if wrapped else model,
        "data_preprocessor": _plain(cfg.get("data_preprocessor")),
        "train_dataloader": _plain(cfg.get("train_dataloader"), _DATA_LOCATION),
        "optim_wrapper": _plain(cfg.get("optim_wrapper")),
        "param_scheduler": [s.get("type") if isinstance(s, Mapping) else s for s in scheds],
    }
    out: dict[str, str] = {}

    def flatten(obj: Any, prefix: str) -> None:
        if isinstance(obj, dict) and obj:
            for k, v in obj.items():
                flatten(v, f"{prefix}.{k}")
        else:
            out[prefix] = json.dumps(obj, sort_keys=True, default=repr)

    for name, value in parts.items():
        flatten(value, name)
    return out


def resume_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: checkpoint X, now Y"`` for every :func:`resume_relevant` key that differs."""
    a, b = resume_relevant(saved), resume_relevant(current)
    return [
        f"{k}: checkpoint {a.get(k, '<not set>')}, now {b.get(k, '<not set>')}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _saved_config(text: Any) -> tuple[Any, str]:
    """The config a checkpoint stores (its ``meta.cfg`` dump), or ``(None, why not)``."""
    from mmengine.config import Config

    if not isinstance(text, str):
        return None, "holds no config"
    try:
        return Config.fromstring(text, file_format=".py"), ""
    except Exception as err:  # noqa: BLE001 - whatever an unparsable dump raises
        return None, f"holds a config that cannot be read ({type(err).__name__})"


def _differences(diffs: list[str]) -> str:
    """``Differences:`` and the first 20 of :func:`resume_differences`, one a line."""
    more = f"\n  ... ({len(diffs)} in all)" if len(diffs) > 20 else ""
    return "Differences:\n  " + "\n  ".join(diffs[:20]) + more


def _backbone_shapes(model_cfg: dict) -> dict[str, tuple] | None:
    """Tensor shapes of the backbone ``model_cfg`` builds (on the meta device where the model
    allows, else on the CPU; nothing is converted); None if it has no ``backbone``."""
    try:
        with torch.device("meta"):
            net = MODELS.build(copy.deepcopy(model_cfg))
    except RuntimeError:  # a model that computes with its tensors while it is built
        net = MODELS.build(copy.deepcopy(model_cfg))
    backbone = getattr(net, "backbone", None)
    if backbone is None:
        return None
    return {k: tuple(v.shape) for k, v in backbone.state_dict().items()}


@functools.lru_cache(maxsize=4)
def _reference_backbone(model: str, in_channels: int | None) -> dict[str, tuple] | None:
    """Tensor shapes of ``model``'s backbone as
    :func:`lbp_wht.experiments.presets.model_config` defines it."""
    from lbp_wht.experiments.presets import model_config

    return _backbone_shapes(model_config(model, in_channels=in_channels))


def _check_model_name(cfg: Any) -> None:
    """Refuse an ``lbp.model`` (a ``MODEL_SPECS`` id) whose backbone is
    not the one the config builds: its record would be filed under the wrong model. Checked
    before the runner builds the model, whose conversion runs at ``lbp.model``'s input size."""
    from mmengine.registry import DefaultScope

    from lbp_wht.experiments.models import MODEL_SPECS as KNOWN

    lbp = validate_lbp_cfg(cfg.get("lbp"))
    name = lbp["model"]
    inner = cfg.model.get("model", cfg.model)
    if name not in KNOWN or "backbone" not in inner:
        return  # a name of the user's own (with lbp.preset): nothing to compare with
    if lbp["model_variant"] is not None:  # a declared variant: the same kind of backbone
        from lbp_wht.experiments.presets import model_config

        want_type = model_config(name)["backbone"]["type"]
        if inner["backbone"].get("type") != want_type:
            raise ModelMismatchError(
                f"lbp.model={name!r} (variant {lbp['model_variant']!r}) builds a "
                f"{want_type} backbone, this config a {inner['backbone'].get('type')}: set "
                "lbp.model to the model the config builds."
            )
        return
    in_channels = inner["backbone"].get("in_channels")
    with DefaultScope.overwrite_default_scope(cfg.get("default_scope")):
        have = _backbone_shapes(inner)
        want = _reference_backbone(name, in_channels)
    if have is None or want is None:
        return
    diff = [
        f"{k}: built {have.get(k)}, {name} has {want.get(k)}"
        for k in sorted(set(want) | set(have))
        if want.get(k) != have.get(k)
    ]
    if diff:
        raise ModelMismatchError(
            f"lbp.model={name!r} does not name the model this config builds "
            f"({inner.get('type')} with backbone {inner['backbone'].get('type')}): "
            f"{len(diff)} backbone tensors differ ({_fmt(diff, 3)}). Its record would be "
            "filed under the wrong model; set lbp.model to the model the config builds."
        )


def resume_target(resume: Any, load_from: str | None) -> tuple[str | None, bool]:
    """``(path, auto)`` of a config's ``resume`` / ``load_from``: the checkpoint an explicit
    resume names (``resume=<path>``, or ``resume=True`` with ``load_from``), and whether the
    newest checkpoint of the work dir is to be resumed (``resume='auto'``, or ``True`` alone)."""
    if isinstance(resume, str) and resume and resume != "auto":
        return resume, False
    if resume is True and load_from is not None:
        return load_from, False
    return None, resume == "auto" or (resume is True and load_from is None)


def _torch_env_from_slurm() -> None:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` (the job's first node) and
    ``MASTER_PORT`` (kept if set, else 29500) from the variables ``srun`` gives each process."""
    env = os.environ
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        nodes = subprocess.run(
            ["scontrol", "show", "hostnames", env["SLURM_NODELIST"]],
            capture_output=True,
            text=True,
            check=True,
        )
        env["MASTER_ADDR"] = nodes.stdout.split()[0]
    env.setdefault("MASTER_PORT", "29500")


@RUNNERS.register_module()
class LBPWHTRunner(Runner):
    """mmengine ``Runner`` for configs with an ``lbp`` block (see module docstring)."""

    #: digest of the effective config given to :meth:`from_cfg` (before the injection)
    config_digest: str | None = None
    #: resume a checkpoint that holds no (readable) config, without comparing (--resume-unchecked)
    resume_unchecked = False

    @classmethod
    def from_cfg(cls, cfg: Any) -> LBPWHTRunner:
        digest = config_digest(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
        cfg = copy.deepcopy(cfg)
        inject_lbp(cfg)
        _check_model_name(cfg)
        runner = super().from_cfg(cfg)
        runner.config_digest = digest
        return runner  # type: ignore[return-value]

    def register_default_hooks(self, hooks: dict | None = None) -> None:
        # mmengine's CheckpointHook deletes the old checkpoint before it writes the new one
        hooks = dict(hooks or {})
        ckpt = hooks.get("checkpoint", dict(type="CheckpointHook", interval=1))
        if isinstance(ckpt, dict) and ckpt.get("type") in ("CheckpointHook", None):
            hooks["checkpoint"] = {**ckpt, "type": "DurableCheckpointHook"}
        super().register_default_hooks(hooks)

    def register_custom_hooks(self, hooks: list) -> None:
        hooks = list(hooks or [])
        if "NonFiniteGuardHook" not in {
            h.get("type") if isinstance(h, dict) else type(h).__name__ for h in hooks
        }:
            hooks.append(dict(type="NonFiniteGuardHook"))
        super().register_custom_hooks(hooks)

    @property
    def lbp_cfg(self) -> dict[str, Any]:
        """The validated ``lbp`` block of the config (defaults filled in)."""
        return validate_lbp_cfg(self.cfg.get("lbp"))

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.model.module if is_model_wrapper(self.model) else self.model

    # ---- CPU distributed ------------------------------------------------------------------
    def setup_env(self, env_cfg: dict) -> None:
        if self._distributed and not is_distributed() and not torch.cuda.is_available():
            # mmengine's init_dist would call torch.cuda.set_device: gloo here (env://)
            if self._launcher == "slurm":
                _torch_env_from_slurm()
            elif self._launcher != "pytorch":
                raise RuntimeError(
                    f"CPU distributed training is supported with launcher='pytorch' (torchrun) or 'slurm' (srun), got launcher={self._launcher!r}"
                )
            timeout = env_cfg.get("dist_cfg", {}).get("timeout", 1800)
            torch_dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module) -> Any:
        if not (self.distributed and get_device() == "cpu"):
            return super().wrap_model(model_wrapper_cfg, model)
        # mmengine passes device_ids=[LOCAL_RANK], which DDP rejects for CPU modules
        wrapper = dict(
            model_wrapper_cfg
            or dict(
                type="MMDistributedDataParallel",
                broadcast_buffers=False,
                find_unused_parameters=self.cfg.get("find_unused_parameters", False),
            )
        )
        wrapper.setdefault("type", MMDistributedDataParallel.__name__)
        return MODEL_WRAPPERS.build(
            wrapper, default_args=dict(module=model.to("cpu"), device_ids=None)
        )

    # ---- entry points ---------------------------------------------------------------------
    @property
    def resume_path(self) -> str | None:
        return resume_target(self._resume, self._load_from)[0]

    @property
    def auto_resume(self) -> bool:
        return resume_target(self._resume, self._load_from)[1]

    def _check_exists(self) -> None:
        for what, path in (("resume", self.resume_path), ("load_from", self._load_from)):
            if path and "://" not in str(path) and not os.path.exists(path):
                raise CheckpointNotFoundError(
                    f"{what}={path!r} does not exist. Pretrained checkpoints: `python tools/fetch_checkpoints.py --list` (and data/README.md); or point load_from at your file with --cfg-options load_from=PATH"
                )

    def train(self) -> torch.nn.Module:
        nothing = self._load_from is None and self.resume_path is None
        if (
            nothing
            and not (self.auto_resume and checkpoint_candidates(self.work_dir))
            and not self.lbp_cfg["allow_random_init"]
        ):
            raise NoWeightsError(NO_WEIGHTS_MESSAGE)
        self._check_exists()
        check_dataloader_paths(
            {"train_dataloader": self._train_dataloader, "val_dataloader": self._val_dataloader}
        )
        return super().train()

    def val(self) -> dict:
        check_dataloader_paths({"val_dataloader": self._val_dataloader})
        return super().val()

    def test(self) -> dict:
        self._check_exists()
        check_dataloader_paths({"test_dataloader": self._test_dataloader})
        self._testing = True
        return super().test()

    # ---- loading and resuming -------------------------------------------------------------
    def load_or_resume(self) -> None:
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
        skipped, resumed = [], None
        for path in checkpoint_candidates(self.work_dir):
            try:
                self.resume(path)
            except (CheckpointLoadError, CheckpointNotFoundError) as err:
                skipped.append((path, err))
                continue
            resumed = path
            break
        pointer = read_last_checkpoint(self.work_dir)
        if pointer and not os.path.exists(pointer):
            self.logger.warning(f"last_checkpoint names {pointer}, which does not exist")
        if skipped:
            lines = []
            for path, err in skipped:
                kept = (
                    f" (kept as {move_aside(path, '.unreadable')})"
                    if is_main_process() and os.path.exists(path)
                    else ""
                )
                lines.append(f"  {path}{kept}: {str(err).split('. ')[0]}")
            msg = "--resume: skipped checkpoints that cannot be loaded:\n" + "\n".join(lines)
            if resumed is None:
                raise CheckpointLoadError(
                    f"{msg}\nNo loadable checkpoint is left in {self.work_dir}; start the run over without --resume (or resume a copy with --resume PATH)."
                )
            warnings.warn(msg + f"\nresumed from {resumed} instead", stacklevel=2)
            self.logger.warning(msg + f"\nresumed from {resumed} instead")
        elif resumed is None:
            self.logger.info(
                f"--resume: no checkpoint in {self.work_dir} yet; starting from load_from={self._load_from}"
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
        self, filename: str, ckpt: Any, strict: bool, revise_keys: list
    ) -> dict:
        meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
        if (
            not (isinstance(meta, dict) and {"iter", "epoch"} <= set(meta))
            or "state_dict" not in ckpt
            or "message_hub" not in ckpt
        ):
            raise CheckpointLoadError(
                f"{filename} is not a training checkpoint of this pipeline (no meta / iteration count): --resume needs a checkpoint written by tools/train.py. To start a new run from its weights, use --cfg-options load_from={filename} without --resume."
            )
        self._check_resume_config(filename, meta.get("cfg"))
        nan = _nan_tensors(ckpt["state_dict"])
        if nan:
            raise NonFiniteCheckpointError(
                f"--resume {filename}: the checkpoint holds NaN in {_fmt(nan, 5)} (training had diverged when it was saved). Resume an earlier checkpoint with --resume PATH."
            )
        self.call_hook("after_load_checkpoint", checkpoint=ckpt)
        _load_checkpoint_to_model(self.unwrapped_model, ckpt, strict, revise_keys=revise_keys)
        return ckpt

    #: What a test must share with the training run of its checkpoint: the method, the model
    #: and the task (optimiser, schedule and batch sizes may differ).
    _TEST_RELEVANT = ("lbp.", "model.", "data_preprocessor.", "train_dataloader.dataset.")

    def _check_test_config(self, filename: str, ckpt: Any) -> None:
        """Refuse a test config that differs from the one the checkpoint was trained with in
        :data:`_TEST_RELEVANT` (a checkpoint without a readable config is not compared)."""
        meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
        saved, _ = _saved_config(meta.get("cfg") if isinstance(meta, dict) else None)
        if saved is None:
            return
        diffs = [
            d for d in resume_differences(saved, self.cfg) if d.startswith(self._TEST_RELEVANT)
        ]
        if diffs:
            raise CheckpointMismatchError(
                f"{filename} was trained with another method, model or task than this config; "
                f"its score would be recorded under the wrong name. {_differences(diffs)}\n"
                "Test it with the config it was trained with."
            )

    def _check_resume_config(self, filename: str, text: Any) -> None:
        saved, why = _saved_config(text)
        if saved is None:
            if not self.resume_unchecked:
                raise ResumeMismatchError(
                    f"--resume {filename}: the checkpoint {why}, so it cannot be checked against this run's method, model, data and optimiser; resuming could mix two configurations. Resume it anyway with --resume-unchecked."
                )
            self.logger.warning(f"{filename} {why}: resumed unchecked (--resume-unchecked)")
            return
        diffs = resume_differences(saved, self.cfg)
        if diffs:
            raise ResumeMismatchError(
                f"--resume {filename}: the checkpoint was trained with another configuration; "
                f"resuming would mix the two. {_differences(diffs)}\n"
                "Resume with the checkpoint's settings, or start a new run in another work "
                f"dir (to start from these weights: --cfg-options load_from={filename})."
            )

    def _apply_pretrained_checkpoint(self, filename: str, ckpt: Any, revise_keys: list) -> dict:
        """``load_from`` (and ``tools/test.py``): compare with the model, load what fits."""
        lbp, model = self.lbp_cfg, self.unwrapped_model
        self.call_hook("after_load_checkpoint", checkpoint=ckpt)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise CheckpointMismatchError(f"{filename}: no state_dict found in the checkpoint")
        state = {k: v for k, v in state.items() if torch.is_tensor(v)}
        for pattern, repl in revise_keys:
            state = {re.sub(pattern, repl, k): v for k, v in state.items()}
        if any(".attn.attn.in_proj_" in k for k in state):  # an mmseg Segformer checkpoint
            from .models import mmseg_attention_keys_to_explicit

            state = mmseg_attention_keys_to_explicit(state)
        testing = getattr(self, "_testing", False)
        if testing:
            self._check_test_config(filename, ckpt)
        # a test evaluates the checkpoint's own weights: none dropped, none left at init
        drop_keys, reinit_keys = ([], []) if testing else (lbp["drop_keys"], lbp["reinit_keys"])
        dropped = [k for k in state if any(fnmatchcase(k, p) for p in drop_keys)]
        if dropped:
            print_log(
                f"load_from {filename}: not loading {_fmt(dropped)} (lbp.drop_keys)",
                logger="current",
            )
            state = {k: v for k, v in state.items() if k not in set(dropped)}
        own = model.state_dict()
        diff = compare_state_dicts(own, state, reinit_keys + drop_keys)
        foreign = [k for k in diff["unexpected"] if _ADAPTER_RE.search(k)]
        if foreign:
            raise CheckpointMismatchError(
                f"load_from {filename}: the checkpoint holds {len(foreign)} adapter tensors ({_fmt(foreign, 3)}) that this model (lbp.method={lbp['method']!r}) has no place for; they would be dropped. Use the config the checkpoint was trained with, or list them in lbp.drop_keys to drop them knowingly."
            )
        if diff["adapters"] and testing:
            raise CheckpointMismatchError(
                f"{filename} holds none of the model's {len(diff['adapters'])} adapter tensors ({_fmt(diff['adapters'], 3)}): testing would evaluate untrained adapters. Test the checkpoint its training run saved, with the config it was trained with."
            )
        if diff["adapters"]:
            print_log(
                f"load_from {filename}: {len(diff['adapters'])} adapter tensors (LoRA / LoSA) are not in the checkpoint (expected for a checkpoint of the unconverted model; they keep their initialisation, lora_B = 0, LoSA's output projections = 0)",
                logger="current",
            )
        if diff["reinit"]:
            print_log(
                f"load_from {filename}: left at initialisation (lbp.reinit_keys): {_fmt(diff['reinit'])}",
                logger="current",
                level=30,
            )
        skip = {k for k, *_ in diff["mismatched"]} | {
            i[0] if isinstance(i, tuple) else i for i in diff["reinit"]
        }
        loads = [k for k in state if k in own and k not in skip]
        if not loads:
            raise CheckpointMismatchError(
                f"load_from {filename}: none of its {len(state)} tensors fits the model "
                f"({type(model).__name__}, {len(own)} tensors), so nothing would be loaded. The "
                f"model expects keys like {_fmt(list(own), 3)}; the file has "
                f"{_fmt(list(state), 3) or 'no tensors'}. Is this the checkpoint for this model "
                "(tools/fetch_checkpoints.py), and do lbp.reinit_keys / lbp.drop_keys cover only "
                "the head?"
            )
        problems = [f"missing in checkpoint: {_fmt(diff['missing'])}"] if diff["missing"] else []
        problems += (
            [f"shape mismatch (key, ckpt, model): {_fmt(diff['mismatched'])}"]
            if diff["mismatched"]
            else []
        )
        if problems and testing:
            raise CheckpointMismatchError(
                f"{filename} does not match the model ({type(model).__name__}): {'; '.join(problems)}. Testing would evaluate these at their initialisation (lbp.drop_keys / reinit_keys apply to load_from, not to a test). Test the checkpoint its training run saved, with the config it was trained with."
            )
        if problems:
            msg = f"load_from {filename} does not match the model ({type(model).__name__}): {'; '.join(problems)}. Is this the checkpoint for this model? (tools/fetch_checkpoints.py)"
            if lbp["strict_load"]:
                raise CheckpointMismatchError(msg + " Set lbp.strict_load=False to load anyway.")
            print_log(msg, logger="current", level=40)
        if diff["unexpected"]:
            print_log(
                f"load_from {filename}: checkpoint keys not used by the model: {_fmt(diff['unexpected'])}",
                logger="current",
                level=30,
            )
        nan = _nan_tensors({k: state[k] for k in loads})
        if nan:
            raise NonFiniteCheckpointError(
                f"load_from {filename}: the checkpoint holds NaN in {_fmt(nan, 5)}; training from it gives NaN losses throughout. Use another checkpoint."
            )
        model.load_state_dict({k: state[k] for k in loads}, strict=False)
        self._has_loaded = True
        print_log(
            f"Load checkpoint from {filename} ({len(loads)} of {len(own)} model tensors)",
            logger="current",
        )
        return ckpt
