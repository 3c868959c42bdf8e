"""Gradient fidelity of an experiment config: its model, a checkpoint and a batch of its data.

:func:`analyze_config` builds the config's model as Full BP would train it (same scope, same
frozen parameters, BatchNorm as the preset keeps it), finds the layers LBP-WHT converts in that
setting (the config's preset), takes one batch of the config's training data (its pipeline,
augmentation included, seeded) and runs :func:`lbp_wht.fidelity.gradient_fidelity` on the
training loss of that batch, once per model *state*:

* ``start``: the model as an adaptation run starts, i.e. the config's ``load_from`` with the
  ``lbp.drop_keys`` dropped (for the CPU demo: the pretrained source checkpoint and a freshly
  initialised head, seed ``seed``);
* each ``NAME=PATH`` checkpoint: every tensor of that checkpoint (e.g. the end of an adaptation
  run).

Returns rows with a ``state`` column prepended to :data:`lbp_wht.fidelity.FIELDS`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch

__all__ = ["analyze_config", "analyze_methods", "load_weights", "fidelity_layers"]


def load_weights(model: torch.nn.Module, path: str, drop: Sequence[str] = ()) -> list[str]:
    """Load the ``state_dict`` of checkpoint ``path`` into ``model``, except keys matching
    ``drop``; returns the model keys left at initialisation.

    Raises:
        ValueError: the checkpoint misses model keys other than those dropped, or holds keys
            of other shapes (names listed).
    """
    from .checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state_dict in the checkpoint")
    state = {
        k: v
        for k, v in state.items()
        if torch.is_tensor(v) and not any(fnmatchcase(k, p) for p in drop)
    }
    own = model.state_dict()
    shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape:
        raise ValueError(f"{path}: tensors of another shape than the model's: {shape[:8]}")
    missing = [k for k in own if k not in state]
    bad = [k for k in missing if not any(fnmatchcase(k, p) for p in drop)]
    if bad:
        raise ValueError(f"{path}: the checkpoint lacks model keys {bad[:8]} ({len(bad)} in all)")
    model.load_state_dict(state, strict=False)
    return missing


def fidelity_layers(cfg: Any) -> list[str]:
    """The layers LBP-WHT converts for the config's model and scope (its preset's rules)."""
    from .build import lbp_layers
    from .cost_record import build_model

    lbp_cfg = copy.deepcopy(cfg)
    lbp_cfg.lbp = {**dict(cfg.lbp), "method": "lbp_wht", "select": "lp_l1", "r": 4}
    names = list(lbp_layers(build_model(lbp_cfg)))
    if not names:
        raise ValueError(f"the preset of lbp.model={cfg.lbp.get('model')!r} converts no layer")
    return names


def _setup(cfg: Any, batch_size: int, seed: int) -> tuple[torch.nn.Module, Any, Any, list[str]]:
    """``(model, inputs, loss_fn, layers)``: the config's model as Full BP trains it (seeded,
    ``load_from`` not loaded), one seeded batch of its training data, the training loss on it,
    and the layers LBP-WHT converts in that setting."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner, set_random_seed

    import lbp_wht.integrations.models  # noqa: F401  (registers the convertible backbones)

    from .build import validate_lbp_cfg
    from .cost_record import build_model

    init_default_scope(cfg.get("default_scope", "mmpretrain"))
    validate_lbp_cfg(cfg.lbp)
    layers = fidelity_layers(cfg)
    exact_cfg = copy.deepcopy(cfg)
    exact_cfg.lbp = {**dict(cfg.lbp), "method": "full_bp"}
    # Python's and NumPy's generators too: mmcv's random transforms (the demo's RandomFlip)
    # draw from NumPy, which torch.manual_seed leaves as it is, so the batch changed per call.
    set_random_seed(seed)
    model = build_model(exact_cfg)
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(batch_size=batch_size, num_workers=0, persistent_workers=False)
    batch = next(iter(Runner.build_dataloader(loader_cfg, seed=seed)))
    data = model.data_preprocessor(batch, True)
    inputs, samples = data["inputs"], data["data_samples"]

    def loss_fn(m: torch.nn.Module) -> torch.Tensor:
        losses = m(inputs, samples, mode="loss")
        return sum(v for k, v in losses.items() if "loss" in k)

    return model, inputs, loss_fn, layers


def _load_start(model: torch.nn.Module, cfg: Any) -> None:
    """The start of adaptation: ``load_from`` minus ``lbp.drop_keys`` (if ``load_from``)."""
    if cfg.get("load_from"):
        load_weights(model, cfg.load_from, dict(cfg.lbp).get("drop_keys", ()))


def analyze_methods(
    cfg: Any, methods: Sequence[tuple], *, batch_size: int = 128, seed: int = 0
) -> list[dict[str, Any]]:
    """Gradient fidelity of every method key ``(method, select, r)`` of ``methods`` at the start
    of adaptation (``load_from`` minus ``lbp.drop_keys``): each converts the layers LBP-WHT
    converts in the config's setting by its core rule (``MethodSpec.core_rule``), and
    :func:`lbp_wht.fidelity.rule_fidelity` compares its gradients with exact backprop on one
    seeded batch. Rows carry ``method`` (the row label) and ``method_id``.

    Raises:
        ValueError: a method that converts nothing (it has no gradients of its own to compare).
    """
    from lbp_wht.experiments.methods import method_spec
    from lbp_wht.experiments.vocab import method_label
    from lbp_wht.fidelity import rule_fidelity

    model, inputs, loss_fn, layers = _setup(cfg, batch_size, seed)
    _load_start(model, cfg)
    model.train()
    rule_sets, ids = {}, {}
    for key in methods:
        spec = method_spec(key[0])
        if not spec.converts:
            raise ValueError(f"method {key[0]!r} converts no layer: nothing to compare")
        label = method_label(key)
        rule_sets[label] = [spec.core_rule(n, select=key[1], r=key[2]) for n in layers]
        ids[label] = key[0]
    rows = rule_fidelity(model, layers, loss_fn, rule_sets, example_input=inputs[:1], seed=seed)
    return [{**row, "method_id": ids[row["method"]]} for row in rows]


def analyze_config(
    cfg: Any,
    checkpoints: Mapping[str, str] | None = None,
    *,
    start: bool = True,
    batch_size: int = 128,
    seed: int = 0,
    selections: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Fidelity rows of ``cfg`` (an mmengine ``Config`` with an ``lbp`` block, data roots and
    ``load_from`` as training uses them) per state: ``start`` (unless ``start=False``) and each
    ``{state name: checkpoint path}`` of ``checkpoints``. ``seed`` seeds the fresh head and the
    batch (pipeline randomness included); ``selections``: :class:`lbp_wht.fidelity.Selection`
    list (default: all of them).

    Raises:
        ValueError: nothing to evaluate, or a checkpoint that does not fit the model.
    """
    from lbp_wht.fidelity import gradient_fidelity

    states: dict[str, str | None] = {"start": None} if start else {}
    states.update(checkpoints or {})
    if not states:
        raise ValueError("nothing to analyze: give checkpoints or keep the start state")
    model, inputs, loss_fn, layers = _setup(cfg, batch_size, seed)
    init = copy.deepcopy(model.state_dict())
    rows: list[dict[str, Any]] = []
    for name, path in states.items():
        model.load_state_dict(init)
        if path is None:
            _load_start(model, cfg)
        else:
            load_weights(model, path)
        model.train()
        for row in gradient_fidelity(model, layers, loss_fn, selections, example_input=inputs[:1]):
            rows.append({"state": name, **row})
    return rows
