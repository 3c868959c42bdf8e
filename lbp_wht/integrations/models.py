"""Thin model wrappers so that the paper's models can be converted by :func:`lbp_wht.convert`.

:func:`lbp_wht.convert` swaps ``nn.Linear`` / 1x1 ``nn.Conv2d`` *modules*. That only changes
training if the model calls those modules; three of the paper's models need a little help:

* **EfficientFormerV2 (timm)**: mmpretrain has no EfficientFormerV2, so :class:`TimmEfficientFormerV2`
  wraps ``timm.create_model("efficientformerv2_<arch>")`` (a thin :class:`TIMMBackbone`
  subclass; module names ``backbone.timm_model.stages.<i>.blocks.<j>....``). It returns the
  final, normalised ``(B, C, 7, 7)`` map for a ``GlobalAveragePooling`` neck. Weights come
  only from a local ``checkpoint_path``: nothing is ever downloaded.
* **SwinV2 (mmpretrain)**: ``WindowMSAV2.forward`` computes ``F.linear(x, self.qkv.weight,
  qkv_bias)``, i.e. it reads the qkv *weight* and never calls the ``qkv`` module, so a
  converted ``qkv`` would be silently bypassed. :class:`ModuleQKVWindowMSAV2` is the same
  attention with ``self.qkv(x)`` called as a module (the q/v biases added afterwards);
  :func:`patch_swinv2_qkv` swaps it in (no parameter changes, identical state dict) and the
  registered backbone :class:`SwinTransformerV2Convertible` does so at build time.
* **Segformer (mmseg)**: ``EfficientMultiheadAttention`` wraps ``nn.MultiheadAttention``,
  whose q/k/v projection is one ``in_proj_weight`` Parameter (not a module) and whose
  ``out_proj`` is used through ``F.multi_head_attention_forward`` (not called).
  :class:`ExplicitEfficientMultiheadAttention` computes the same function with explicit
  ``q``, ``k``, ``v`` and ``proj`` ``nn.Linear`` layers; :func:`convert_segformer_attention`
  rewrites a model in place and the registered backbone
  :class:`MixVisionTransformerConvertible` does so at build time. Checkpoints keep loading:
  see :func:`mmseg_attention_keys_to_explicit` for the key mapping, which the module also
  applies automatically inside ``load_state_dict``.

Import this module (e.g. ``custom_imports=dict(imports=["lbp_wht.integrations",
"lbp_wht.integrations.models"])``) to register the backbones; it imports mmpretrain and mmseg.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import compat

compat.apply()  # torchvision / mmcv.ops shims must precede the imports below

from mmpretrain.models.backbones import SwinTransformerV2, TIMMBackbone  # noqa: E402
from mmpretrain.models.utils.attention import WindowMSAV2  # noqa: E402
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS  # noqa: E402
from mmseg.models.backbones.mit import (  # noqa: E402
    EfficientMultiheadAttention,
    MixVisionTransformer,
)
from mmseg.models.utils import nchw_to_nlc, nlc_to_nchw  # noqa: E402
from mmseg.registry import MODELS as MMSEG_MODELS  # noqa: E402

from ..layers import LBPMixin  # noqa: E402

__all__ = [
    "TimmEfficientFormerV2",
    "EFFICIENTFORMERV2_CHANNELS",
    "ModuleQKVWindowMSAV2",
    "patch_swinv2_qkv",
    "SwinTransformerV2Convertible",
    "ExplicitEfficientMultiheadAttention",
    "convert_segformer_attention",
    "mmseg_attention_keys_to_explicit",
    "MixVisionTransformerConvertible",
    "assert_convertible",
]


# --------------------------------------------------------------------------------------------
# EfficientFormerV2 (timm) as an mmpretrain backbone
# --------------------------------------------------------------------------------------------
#: Channels of the final feature map (the ``in_channels`` of the classification head).
EFFICIENTFORMERV2_CHANNELS = {"s0": 176, "s1": 224, "s2": 288, "l": 384}


@MMPRETRAIN_MODELS.register_module()
class TimmEfficientFormerV2(TIMMBackbone):
    """timm ``efficientformerv2_<arch>`` returning its final normalised map ``(B, C, 7, 7)``.

    mmpretrain's ``TIMMBackbone`` already does the work (``features_only=False``: timm's
    ``forward_features`` + final BatchNorm; the classifier is reset to identity). This subclass
    fixes the model family, keeps module names ``backbone.timm_model.stages.<i>...``, and
    refuses downloads. The timm model expects 224x224 inputs (attention biases are sized for
    the 7x7 / 14x14 maps).

    Args:
        arch: ``"s0"``, ``"s1"``, ``"s2"`` or ``"l"``.
        checkpoint_path: local timm-format checkpoint (keys as in ``timm.create_model``'s
            ``state_dict()``, including its 1000-class heads); ``""`` keeps random init.
        pretrained: must stay False (no network access); use ``checkpoint_path``.
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """

    def __init__(
        self,
        arch: str = "s0",
        checkpoint_path: str = "",
        pretrained: bool = False,
        init_cfg: Any = None,
        **kwargs: Any,
    ) -> None:
        if arch not in EFFICIENTFORMERV2_CHANNELS:
            raise ValueError(
                f"TimmEfficientFormerV2: unknown arch {arch!r}; choose one of "
                f"{sorted(EFFICIENTFORMERV2_CHANNELS)}"
            )
        if pretrained:
            raise ValueError(
                "TimmEfficientFormerV2 never downloads weights: set pretrained=False and pass "
                "checkpoint_path='/path/to/efficientformerv2_<arch>.pth' (timm state dict)"
            )
        kwargs.pop("features_only", None)  # the final map only; see class docstring
        super().__init__(
            model_name=f"efficientformerv2_{arch}",
            features_only=False,
            pretrained=False,
            checkpoint_path=checkpoint_path,
            init_cfg=init_cfg,
            **kwargs,
        )
        self.arch = arch
        self.out_channels = EFFICIENTFORMERV2_CHANNELS[arch]

    def train(self, mode: bool = True) -> TimmEfficientFormerV2:
        # mmpretrain's BaseBackbone.train returns None; keep nn.Module's `return self`
        # so that `backbone.eval()` chains.
        super().train(mode)
        return self


# --------------------------------------------------------------------------------------------
# SwinV2: call qkv as a module
# --------------------------------------------------------------------------------------------
class ModuleQKVWindowMSAV2(WindowMSAV2):
    """mmpretrain ``WindowMSAV2`` whose ``qkv`` projection is *called* as a module.

    Same parameters and buffers as the parent (so the same state dict). Mathematically the same
    function: ``qkv = self.qkv(x) + [q_bias, 0, v_bias]`` (the bias-free qkv Linear, then the
    learnable q and v biases; SwinV2 has no k bias), cosine attention with a clamped learnable
    logit scale, the continuous relative position bias ``16 * sigmoid(cpb_mlp(coords))``, the
    shifted-window mask, softmax, ``proj``. Only floating-point rounding differs (the bias is
    added after the matmul instead of inside it), about 1e-7 relative.

    Input ``x``: ``(B * num_windows, Wh * Ww, C)``; mask ``(num_windows, N, N)`` or None.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        nb, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x)  # a module call, so LBPLinear / LoRALinear take part in training
        if self.q_bias is not None:
            zeros = torch.zeros_like(self.v_bias, requires_grad=False)
            qkv = qkv + torch.cat((self.q_bias, zeros, self.v_bias))
        q, k, v = qkv.reshape(nb, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)

        # Cosine attention: (nb, heads, n, n)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()

        # Continuous relative position bias from the small cpb MLP, looked up per token pair.
        table = self.cpb_mlp(self.relative_coords_table).view(-1, heads)
        win = self.window_size[0] * self.window_size[1]
        rel = table[self.relative_position_index.view(-1)].view(win, win, heads)
        attn = attn + 16 * torch.sigmoid(rel.permute(2, 0, 1)).unsqueeze(0)

        if mask is not None:  # shifted windows: -100 between tokens from different regions
            nw = mask.shape[0]
            attn = attn.view(nb // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, n, n)
        attn = self.attn_drop(self.softmax(attn))

        out = (attn @ v).transpose(1, 2).reshape(nb, n, c)
        return self.proj_drop(self.proj(out))


def patch_swinv2_qkv(model: nn.Module) -> list[str]:
    """Make every mmpretrain ``WindowMSAV2`` in ``model`` call its ``qkv`` module (in place).

    Swaps the instances' class to :class:`ModuleQKVWindowMSAV2`; parameters, buffers and
    state-dict keys are untouched. Call it before :func:`lbp_wht.convert` (a converted ``qkv``
    in an unpatched SwinV2 would be bypassed). Idempotent.

    Returns:
        Qualified names of the patched attention modules.
    """
    patched = []
    for name, module in model.named_modules():
        if type(module) is WindowMSAV2:
            module.__class__ = ModuleQKVWindowMSAV2
            patched.append(name)
    return patched


@MMPRETRAIN_MODELS.register_module()
class SwinTransformerV2Convertible(SwinTransformerV2):
    """mmpretrain ``SwinTransformerV2`` with :func:`patch_swinv2_qkv` applied at build time.

    Same arguments, module names and state dict as ``SwinTransformerV2``; use it (instead of
    ``type='SwinTransformerV2'``) wherever ``attn.w_msa.qkv`` is to be converted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        patch_swinv2_qkv(self)


# --------------------------------------------------------------------------------------------
# Segformer: explicit q / k / v / proj Linear layers
# --------------------------------------------------------------------------------------------
#: old (mmseg, relative to the attention module) -> new key suffixes, see
#: :func:`mmseg_attention_keys_to_explicit`. ``in_proj_*`` rows are split in thirds q|k|v.
_MHA_OUT_PROJ = {"attn.out_proj.weight": "proj.weight", "attn.out_proj.bias": "proj.bias"}
_MHA_IN_PROJ = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}


class ExplicitEfficientMultiheadAttention(nn.Module):
    """Segformer's efficient (spatial-reduction) attention with explicit projection layers.

    Computes exactly what mmseg's ``EfficientMultiheadAttention`` computes (batch-first)::

        x_kv = LN(sr(x))  if sr_ratio > 1 else x           # spatial reduction, (B, N', C)
        q, k, v = q(x), k(x_kv), v(x_kv)                    # nn.Linear each, C -> C
        out = softmax(q k^T / sqrt(C / heads)) v            # per head, attention dropout
        return identity + dropout_layer(proj_drop(proj(out)))

    but ``q``, ``k``, ``v`` and ``proj`` are ``nn.Linear`` modules that
    :func:`lbp_wht.convert` can target (names ``...attn.q`` etc.). When they are LBP-WHT
    layers, the forward sets their token-map size (``hw``) from the runtime ``hw_shape``
    (``q``, ``proj``: ``(H, W)``; ``k``, ``v``: the reduced map), so non-square inputs work.

    State dict: ``q.*``, ``k.*``, ``v.*``, ``proj.*``, ``sr.*``, ``norm.*``. mmseg-format keys
    (``attn.in_proj_weight`` etc.) are translated on load, see
    :func:`mmseg_attention_keys_to_explicit`.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        dropout_layer: nn.Module | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims={embed_dims} is not divisible by num_heads={num_heads}")
        self.embed_dims, self.num_heads, self.sr_ratio = embed_dims, num_heads, sr_ratio
        self.attn_drop = float(attn_drop)
        self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.k = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.v = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = dropout_layer if dropout_layer is not None else nn.Identity()

    @classmethod
    def from_mmseg(cls, old: EfficientMultiheadAttention) -> ExplicitEfficientMultiheadAttention:
        """Build the equivalent module from an mmseg ``EfficientMultiheadAttention``.

        Weights are copied (q/k/v from the thirds of ``in_proj_weight``/``in_proj_bias``,
        ``proj`` from ``out_proj``); ``sr``, ``norm``, ``proj_drop`` and ``dropout_layer`` are
        reused as they are. The new module is in the same train/eval mode.
        """
        mha = old.attn
        if not isinstance(mha, nn.MultiheadAttention) or not mha._qkv_same_embed_dim:
            raise TypeError(
                "convert_segformer_attention expects nn.MultiheadAttention with kdim == vdim "
                f"== embed_dim inside {type(old).__name__}"
            )
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv / add_zero_attn are not used by Segformer; unsupported")
        if not old.batch_first:
            raise ValueError(
                "ExplicitEfficientMultiheadAttention is batch-first (Segformer's setting); got "
                "batch_first=False"
            )
        c = mha.embed_dim
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.embed_dims, new.num_heads, new.sr_ratio = c, mha.num_heads, old.sr_ratio
        new.attn_drop = float(mha.dropout)
        has_bias = mha.in_proj_bias is not None
        w = mha.in_proj_weight.detach()
        b = mha.in_proj_bias.detach() if has_bias else None
        for i, name in enumerate(("q", "k", "v")):
            lin = nn.Linear(c, c, bias=has_bias, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[i * c : (i + 1) * c])
                if has_bias:
                    lin.bias.copy_(b[i * c : (i + 1) * c])
            lin.weight.requires_grad_(mha.in_proj_weight.requires_grad)
            if has_bias:
                lin.bias.requires_grad_(mha.in_proj_bias.requires_grad)
            setattr(new, name, lin)
        out = mha.out_proj
        proj = nn.Linear(c, c, bias=out.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            proj.weight.copy_(out.weight)
            if out.bias is not None:
                proj.bias.copy_(out.bias)
        proj.weight.requires_grad_(out.weight.requires_grad)
        if out.bias is not None:
            proj.bias.requires_grad_(out.bias.requires_grad)
        new.proj = proj
        if old.sr_ratio > 1:
            new.sr, new.norm = old.sr, old.norm
        new.proj_drop, new.dropout_layer = old.proj_drop, old.dropout_layer
        new.train(old.training)
        return new

    def _set_hw(self, layer: nn.Module, hw: tuple[int, int]) -> None:
        # LBP-WHT layers need the token map size; Segformer knows it only at run time.
        if isinstance(layer, LBPMixin) and layer.prefix_tokens == 0:
            layer.hw = hw

    def forward(
        self, x: torch.Tensor, hw_shape: tuple[int, int], identity: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, H*W, C) with ``hw_shape=(H, W)``; returns (B, H*W, C)."""
        hw = (int(hw_shape[0]), int(hw_shape[1]))
        if self.sr_ratio > 1:
            x_kv = self.sr(nlc_to_nchw(x, hw))
            hw_kv = (int(x_kv.shape[2]), int(x_kv.shape[3]))
            x_kv = self.norm(nchw_to_nlc(x_kv))
        else:
            x_kv, hw_kv = x, hw
        if identity is None:
            identity = x
        self._set_hw(self.q, hw)
        self._set_hw(self.k, hw_kv)
        self._set_hw(self.v, hw_kv)
        self._set_hw(self.proj, hw)

        b, n, c = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
            return t.reshape(b, -1, heads, c // heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x_kv)), split(self.v(x_kv))
        # Same operation order as nn.MultiheadAttention's math path (scale q, q k^T, softmax,
        # dropout, @ v), so outputs agree to float rounding (checked < 1e-6 in the tests).
        attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
        attn = F.dropout(attn.softmax(dim=-1), p=self.attn_drop, training=self.training)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return identity + self.dropout_layer(self.proj_drop(out))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Accept mmseg-format checkpoints (nn.MultiheadAttention keys) transparently: the keys
        # are rewritten in the dict that torch / mmengine pass down before the children
        # (q, k, v, proj) read their entries.
        _translate_attention_keys(state_dict, prefix, self.embed_dims)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"embed_dims={self.embed_dims}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"


def _translate_attention_keys(state_dict: dict[str, Any], prefix: str, embed_dims: int) -> None:
    """In place: ``<prefix>attn.in_proj_*`` / ``attn.out_proj.*`` -> ``q/k/v/proj`` keys."""
    for old, new in _MHA_IN_PROJ.items():
        key = prefix + old
        if key in state_dict:
            t = state_dict.pop(key)
            c = t.shape[0] // 3
            if embed_dims and c != embed_dims:
                raise ValueError(f"{key}: expected {3 * embed_dims} rows, got {t.shape[0]}")
            for i, name in enumerate(("q", "k", "v")):
                state_dict[f"{prefix}{name}.{new}"] = t[i * c : (i + 1) * c]
    for old, new in _MHA_OUT_PROJ.items():
        key = prefix + old
        if key in state_dict:
            state_dict[prefix + new] = state_dict.pop(key)


_MMSEG_ATTN_KEY = re.compile(r"^(.*\.)?attn\.attn\.(in_proj_weight|in_proj_bias|out_proj\.\w+)$")


def mmseg_attention_keys_to_explicit(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Map an mmseg Segformer state dict to :class:`ExplicitEfficientMultiheadAttention` keys.

    For each attention module at ``P`` (e.g. ``backbone.layers.0.1.0.attn.``)::

        P + "attn.in_proj_weight"  (3C, C) -> P + "q.weight", P + "k.weight", P + "v.weight"
                                               (rows [0:C], [C:2C], [2C:3C])
        P + "attn.in_proj_bias"    (3C,)   -> P + "q.bias",   P + "k.bias",   P + "v.bias"
        P + "attn.out_proj.weight"         -> P + "proj.weight"
        P + "attn.out_proj.bias"           -> P + "proj.bias"

    All other keys (``sr``, ``norm``, FFN, decode head, ...) are unchanged. Loading an mmseg
    checkpoint into a converted model does this automatically; this function is for offline
    conversion. Returns a new dict (tensors shared, ``in_proj`` split into views).
    """
    out = dict(state_dict)
    prefixes = sorted({m.group(1) or "" for k in out if (m := _MMSEG_ATTN_KEY.match(k))})
    for p in prefixes:
        _translate_attention_keys(out, p + "attn.", 0)
    return out


def convert_segformer_attention(model: nn.Module) -> list[str]:
    """Replace every mmseg ``EfficientMultiheadAttention`` in ``model`` (in place).

    Each becomes an :class:`ExplicitEfficientMultiheadAttention` with the same weights (outputs
    equal up to float rounding). Call before :func:`lbp_wht.convert`, and before creating the
    optimizer (the q/k/v/proj Parameters are new objects). Idempotent.

    Returns:
        Qualified names of the replaced modules (e.g. ``backbone.layers.0.1.0.attn``).
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, EfficientMultiheadAttention):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, ExplicitEfficientMultiheadAttention.from_mmseg(module))
            replaced.append(name)
    return replaced


@MMSEG_MODELS.register_module()
class MixVisionTransformerConvertible(MixVisionTransformer):
    """mmseg ``MixVisionTransformer`` (Segformer backbone) with explicit attention projections.

    Same arguments as ``MixVisionTransformer``; :func:`convert_segformer_attention` runs at
    build time, so names are ``backbone.layers.<stage>.1.<block>.attn.{q,k,v,proj}``.
    mmseg-format pretrained checkpoints (``init_cfg=dict(type='Pretrained', ...)`` or
    ``load_from``) load unchanged thanks to the key translation on load.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        convert_segformer_attention(self)


# --------------------------------------------------------------------------------------------
def assert_convertible(model: nn.Module) -> None:
    """Raise if ``model`` holds attention modules whose projections convert() cannot reach.

    Catches the silent failure mode: converting ``attn.w_msa.qkv`` in an unpatched SwinV2
    succeeds but changes nothing, because its forward never calls the module.
    """
    for name, module in model.named_modules():
        if type(module) is WindowMSAV2:
            raise TypeError(
                f"{name} is an mmpretrain WindowMSAV2, whose forward bypasses its qkv module; "
                "build the backbone as type='SwinTransformerV2Convertible' or call "
                "lbp_wht.integrations.models.patch_swinv2_qkv(model) first"
            )
        if isinstance(module, EfficientMultiheadAttention):
            raise TypeError(
                f"{name} is an mmseg EfficientMultiheadAttention (projections inside "
                "nn.MultiheadAttention); build the backbone as "
                "type='MixVisionTransformerConvertible' or call "
                "lbp_wht.integrations.models.convert_segformer_attention(model) first"
            )
