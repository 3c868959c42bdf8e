"""Per-family map-geometry adapters: what :func:`lbp_wht.convert` knows about timm / HF models.

Each adapter recognises the modules of one model family by their class name *and* defining
package (so that, e.g., mmpretrain's own ``PatchMerging`` is not mistaken for timm's), and
tells the conversion, for each ``nn.Linear`` / ``nn.Conv2d`` inside them, either its
:class:`~lbp_wht.geometry.MapGeometry` (plus a :class:`~lbp_wht.geometry.MapSource` for map
sizes that follow the input), or why it is not on a spatial map. Nothing here imports timm or
transformers.

==========================  ==================================================================
family                      geometry of the converted layers
==========================  ==================================================================
timm ViT-like: any module   layers under ``blocks``: tokens with ``num_prefix_tokens`` prefix
with ``num_prefix_tokens``, tokens (class, distillation, register); map = the patch grid of
``patch_embed``, ``blocks`` each input (pre-hook on ``patch_embed``, so ``dynamic_img_size``
(ViT, DeiT, EVA, BEiT...)   works). Other layers (head, attention pooling): not a map.
                            CaiT / XCiT add the class token after ``blocks``: no prefix there,
                            and their class-attention blocks are not a map.
timm Swin (V1 / V2) block   ``attn.qkv`` / ``attn.proj``: tokens of one window, map = the
                            block's ``window_size``; ``mlp.*``: tokens of the block's NHWC
                            input map (pre-hook); ``PatchMerging.reduction``: ``nhwc``.
timm ConvNeXt block         ``conv_mlp=False``: ``mlp.fc1`` / ``mlp.fc2`` are ``nhwc``;
                            ``conv_mlp=True``: 1x1 convs (NCHW, nothing to add).
timm MobileViTv2 block      the ``transformer`` layers see unfolded patches ``(B, C, P, N)``:
                            not a spatial map (skipped by ``all-linear``, an error otherwise).
transformers ViT / DeiT     encoder layers: tokens with 1 class token (+1 distillation token,
                            + register tokens); map = patch grid of each ``pixel_values``.
==========================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from .geometry import INPUT_SIZE_ATTR, MapGeometry, MapSource, record_input_size

__all__ = ["GeometryPlan", "plan_geometry", "remove_geometry_hooks", "ADAPTERS"]

#: Attribute the geometry hooks write the current map size to.
MAP_SIZE_ATTR = "_lbp_map_size"


class GeometryPlan:
    """Geometry per qualified module name, map sources, and the hooks that feed them."""

    def __init__(self) -> None:
        #: name -> a :class:`MapGeometry` or a reason string (not a map); absent: family unknown
        self.layers: dict[str, MapGeometry | str] = {}
        self.sources: dict[str, MapSource] = {}
        self.hooks: list[tuple[nn.Module, Callable[..., None]]] = []

    def set(self, name: str, geometry: MapGeometry | str, source: MapSource | None = None) -> None:
        self.layers[name] = geometry
        if source is not None:
            self.sources[name] = source

    def hook(self, module: nn.Module, fn: Callable[..., None]) -> None:
        self.hooks.append((module, fn))

    def attach(self, name: str, layer: nn.Module) -> None:
        if name in self.sources:
            layer.map_source = self.sources[name]

    def install(self) -> None:
        """Register the forward pre-hooks that keep the map sources current (idempotent)."""
        for module, fn in self.hooks:
            if fn not in module._forward_pre_hooks.values():
                module.register_forward_pre_hook(fn, with_kwargs=True)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)


# Hooks are module-level functions that write to the hooked module (no closures), so a
# deep copy of the model carries working hooks that update the copy.
def _record_patch_grid(module: nn.Module, args: tuple, kwargs: dict) -> None:
    x = _first_tensor(args, kwargs)
    if x is None or x.dim() != 4:
        return
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    if hasattr(module, "dynamic_feat_size"):  # timm PatchEmbed (handles dynamic padding)
        grid = module.dynamic_feat_size(hw)
    else:
        p = module.patch_size
        p = (p, p) if isinstance(p, int) else p
        grid = (hw[0] // p[0], hw[1] // p[1])
    setattr(module, MAP_SIZE_ATTR, (int(grid[0]), int(grid[1])))


def _record_nhwc_size(module: nn.Module, args: tuple, kwargs: dict) -> None:
    x = _first_tensor(args, kwargs)
    if x is not None and x.dim() == 4:
        setattr(module, MAP_SIZE_ATTR, (int(x.shape[1]), int(x.shape[2])))


_HOOKS = (_record_patch_grid, _record_nhwc_size, record_input_size)


def _is(module: nn.Module, package: str, *names: str) -> bool:
    cls = type(module)
    return cls.__module__.startswith(package) and cls.__name__ in names


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _layers(
    root: str, m: nn.Module, kind: type | tuple = (nn.Linear, nn.Conv2d)
) -> Iterator[tuple[str, str]]:
    """``(name relative to m, qualified name)`` of the ``kind`` layers strictly inside ``m``."""
    for name, sub in m.named_modules():
        if name and isinstance(sub, kind):
            yield name, _join(root, name)


def _patch_grid(plan: GeometryPlan, pe: nn.Module, pe_name: str, what: str) -> MapSource:
    """A source of the patch grid of each input of patch embedding ``pe`` (hooked)."""
    plan.hook(pe, _record_patch_grid)
    return MapSource(pe, MAP_SIZE_ATTR, f"{pe_name} (patch grid of {what})")


# ---- timm ViT-like ---------------------------------------------------------------------------
#: Containers of models whose class token joins the sequence only *after* ``blocks`` (CaiT's
#: class-attention stage, XCiT's ``cls_attn_blocks``): ``blocks`` then sees the bare patch grid,
#: although the model's ``num_prefix_tokens`` counts the class token.
_LATE_CLASS_TOKEN = ("blocks_token_only", "cls_attn_blocks")


def _timm_vit_like(model: nn.Module, plan: GeometryPlan) -> None:
    for root, m in model.named_modules():
        if not type(m).__module__.startswith("timm."):
            continue
        prefix = getattr(m, "num_prefix_tokens", None)
        pe, blocks = getattr(m, "patch_embed", None), getattr(m, "blocks", None)
        if not (
            isinstance(prefix, int) and isinstance(pe, nn.Module) and isinstance(blocks, nn.Module)
        ):
            continue
        if not hasattr(pe, "patch_size"):
            continue
        if any(isinstance(getattr(m, a, None), nn.Module) for a in _LATE_CLASS_TOKEN):
            prefix = 0
        pe_name = _join(root, "patch_embed")
        source = _patch_grid(plan, pe, pe_name, "the input")
        blocks_name = _join(root, "blocks")
        for _, full in _layers(root, m):
            if full in plan.layers:
                continue
            if full.startswith(blocks_name + "."):
                plan.set(full, MapGeometry("tokens", prefix), source)
            elif full.startswith(pe_name + "."):
                plan.set(full, "patch embedding (timm ViT)")
            else:
                plan.set(
                    full,
                    f"outside the transformer blocks of timm {type(m).__name__} (head or pooling): not a token map",
                )


# ---- timm Swin -------------------------------------------------------------------------------
_SWIN_BLOCKS = ("SwinTransformerBlock", "SwinTransformerV2Block")


def _timm_swin(model: nn.Module, plan: GeometryPlan) -> None:
    for root, m in model.named_modules():
        if _is(m, "timm.models.swin_transformer", *_SWIN_BLOCKS) and hasattr(m, "window_size"):
            window = MapSource(m, "window_size", f"{root}.window_size (one attention window)")
            stage_map = MapSource(m, MAP_SIZE_ATTR, f"{root} input map (B, H, W, C)")
            plan.hook(m, _record_nhwc_size)
            for name, full in _layers(root, m):
                if name.startswith("attn."):
                    plan.set(full, MapGeometry("tokens", 0), window)
                elif name.startswith("mlp."):
                    plan.set(full, MapGeometry("tokens", 0), stage_map)
        elif _is(m, "timm.models.swin_transformer", "PatchMerging"):
            for _, full in _layers(root, m, nn.Linear):
                plan.set(full, MapGeometry("nhwc"))


# ---- timm ConvNeXt ---------------------------------------------------------------------------
def _timm_convnext(model: nn.Module, plan: GeometryPlan) -> None:
    for root, m in model.named_modules():
        if _is(m, "timm.models.convnext", "ConvNeXtBlock"):
            layout = "auto" if getattr(m, "use_conv_mlp", False) else "nhwc"
            for name, full in _layers(root, m):
                if name.startswith("mlp."):
                    plan.set(full, MapGeometry(layout))


# ---- timm MobileViTv2 ------------------------------------------------------------------------
def _timm_mobilevitv2(model: nn.Module, plan: GeometryPlan) -> None:
    for root, m in model.named_modules():
        if not _is(m, "timm.models.mobilevit", "MobileVitV2Block"):
            continue
        for name, full in _layers(root, m):
            if name.startswith("transformer."):
                plan.set(
                    full,
                    "MobileViTv2 LinearTransformerBlock input is unfolded patches (B, C, P, N), "
                    "not a spatial map",
                )


# ---- transformers ViT / DeiT -----------------------------------------------------------------
def _hf_vit(model: nn.Module, plan: GeometryPlan) -> None:
    for root, m in model.named_modules():
        emb = getattr(m, "embeddings", None)
        if not (
            type(m).__module__.startswith("transformers.")
            and isinstance(emb, nn.Module)
            and isinstance(getattr(emb, "patch_embeddings", None), nn.Module)
            and isinstance(getattr(emb, "cls_token", None), torch.Tensor)
        ):
            continue
        pe = emb.patch_embeddings
        if not hasattr(pe, "patch_size"):
            continue
        prefix = 1
        if isinstance(getattr(emb, "distillation_token", None), torch.Tensor):
            prefix += 1
        reg = getattr(emb, "register_tokens", None)
        if isinstance(reg, torch.Tensor):
            prefix += int(reg.shape[1])
        source = _patch_grid(plan, pe, _join(root, "embeddings.patch_embeddings"), "pixel_values")
        for name, full in _layers(root, m):
            if full in plan.layers:
                continue
            if name.startswith("embeddings."):
                plan.set(full, "patch embedding (transformers ViT)")
            elif name.startswith("pooler."):
                plan.set(full, "pooler on the class token: not a token map")
            else:
                plan.set(full, MapGeometry("tokens", prefix), source)


#: The adapters, in the order they run (the first to claim a layer wins).
ADAPTERS: tuple[Callable[[nn.Module, GeometryPlan], None], ...] = (
    _timm_swin,
    _timm_convnext,
    _timm_mobilevitv2,
    _timm_vit_like,
    _hf_vit,
)


def plan_geometry(model: nn.Module) -> GeometryPlan:
    """Run every adapter over ``model``; layers of unknown families get no entry."""
    plan = GeometryPlan()
    for adapter in ADAPTERS:
        adapter(model, plan)
    return plan


def remove_geometry_hooks(model: nn.Module) -> int:
    """Remove the hooks and stored map sizes this module installed; returns how many hooks."""
    removed = 0
    for m in model.modules():
        for key, fn in list(m._forward_pre_hooks.items()):
            if fn in _HOOKS:
                del m._forward_pre_hooks[key]
                m._forward_pre_hooks_with_kwargs.pop(key, None)
                removed += 1
        for attr in (MAP_SIZE_ATTR, INPUT_SIZE_ATTR):
            if attr in vars(m):
                delattr(m, attr)
    return removed
