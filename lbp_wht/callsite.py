"""Route call sites that read a converted layer's weight directly through the layer.

Some attention modules never call their projection module: they compute
``F.linear(x, self.qkv.weight, qkv_bias)`` in their own forward (timm EVA / BEiT / Swin V2 with
separate q and v biases). Replacing ``self.qkv`` by a converted layer then changes nothing: the
layer's forward never runs, its backward stays exact and its full input stays saved, while a
conversion report would list it as converted.

:func:`redirect_call_sites` fixes such a parent without touching its code: while the parent's
forward runs, a :class:`~torch.overrides.TorchFunctionMode` sends every ``F.linear`` /
``F.conv2d`` whose weight belongs to one of the listed layers to that layer's
:meth:`~lbp_wht.layers.ConvertedLayer.call_site` (same input, the call's own bias). The hooks
are module-level functions that read the parent's attribute :data:`ATTR` (names relative to the
parent), so deep copies of the model carry working redirects.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["redirect_call_sites", "remove_call_sites", "ATTR"]

#: Attribute of a parent module: the names (relative to it) of the layers it calls directly.
ATTR = "_lbp_call_sites"
_MODES = "_lbp_call_site_modes"
_OPERANDS = ("input", "weight", "bias")


class _Redirect(TorchFunctionMode):
    def __init__(self, layers: dict[int, nn.Module]) -> None:
        super().__init__()
        self.layers = layers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func is F.conv2d:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            layer = self.layers.get(id(weight))
            extra = (*args[3:], *(v for k, v in kwargs.items() if k not in _OPERANDS))
            if layer is not None and (func is F.linear or not extra):
                x = args[0] if args else kwargs["input"]
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return layer.call_site(x, bias)
        return func(*args, **kwargs)


def _enter(module: nn.Module, args: Any) -> None:
    layers = [module.get_submodule(rel) for rel in getattr(module, ATTR, ())]
    mode = _Redirect({id(layer.weight): layer for layer in layers})
    mode.__enter__()
    module.__dict__.setdefault(_MODES, []).append(mode)


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    modes = module.__dict__.get(_MODES)
    if modes:
        modes.pop().__exit__(None, None, None)


def redirect_call_sites(parent: nn.Module, names: list[str]) -> None:
    """Make ``parent``'s forward call the converted layers ``names`` (relative to ``parent``)
    wherever it applies their weight with ``F.linear`` / ``F.conv2d`` itself. Idempotent."""
    current = list(getattr(parent, ATTR, ()))
    setattr(parent, ATTR, tuple(dict.fromkeys(current + list(names))))
    if _enter not in parent._forward_pre_hooks.values():
        parent.register_forward_pre_hook(_enter)
        parent.register_forward_hook(_exit, always_call=True)


def remove_call_sites(model: nn.Module) -> int:
    """Remove every redirect installed under ``model``; returns how many parents had one."""
    removed = 0
    for m in model.modules():
        if ATTR not in m.__dict__:
            continue
        removed += 1
        del m.__dict__[ATTR]
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key, fn in list(hooks.items()):
                if fn in (_enter, _exit):
                    del hooks[key]
                    m._forward_hooks_always_called.pop(key, None)
    return removed
