"""``LBPLinear`` and ``LBPConv2d``: drop-in layers whose backward is LBP-WHT (Algorithm 1).

Like ``loralib``'s layers they subclass the torch layer they replace and keep its parameters
(the *same* ``Parameter`` objects when built with ``from_module``), so state-dict keys are
unchanged and pretrained checkpoints load into converted models. Both share one code path
(:class:`LBPMixin`); only the plain operation (``F.linear`` / ``F.conv2d``) differs.

Each layer holds an :class:`~lbp_wht.config.LBPConfig` (what to project onto) and a
:class:`~lbp_wht.geometry.MapGeometry` (which axes of its input are the map). Bases that were
set after construction (LHE) are part of the state dict (key ``<layer>.lbp_bases``, an
``(R, 2)`` int64 tensor) so that a reloaded model projects onto the same bases; the key exists
only on such layers, so the state dict of a model converted with a low-pass selection has
exactly the keys of the plain model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bases import BaseIndex, select_bases
from .config import LBPConfig
from .functional import lbp_forward
from .geometry import MapGeometry, MapSource, ResolvedMap, resolve_map
from .projection import WHTProjector

__all__ = [
    "ConvertedLayer",
    "LBPLinear",
    "LBPConv2d",
    "LBPMixin",
    "LBPPlan",
    "BatchNormGuard",
    "shell_like",
    "BASES_KEY",
]

#: State-dict key suffix of bases set after construction (LHE).
BASES_KEY = "lbp_bases"

_M = TypeVar("_M", bound=nn.Module)


def conv1x1_problem(conv: nn.Module) -> str | None:
    """Why ``conv`` is not a plain 1x1 convolution (``None`` if it is one)."""
    if not isinstance(conv, nn.Conv2d):
        return f"not an nn.Conv2d ({type(conv).__name__})"
    k, s, p = tuple(conv.kernel_size), tuple(conv.stride), conv.padding
    bad = []
    if k != (1, 1):
        bad.append(f"kernel_size={k}")
    if s != (1, 1):
        bad.append(f"stride={s}")
    if p not in ((0, 0), "valid", 0):
        bad.append(f"padding={p}")
    if tuple(conv.dilation) != (1, 1):
        bad.append(f"dilation={tuple(conv.dilation)}")
    if conv.groups != 1:
        bad.append(f"groups={conv.groups}")
    return ", ".join(bad) if bad else None


_CONV_ATTRS = """in_channels out_channels kernel_size stride padding dilation transposed
output_padding groups padding_mode _reversed_padding_repeated_twice""".split()


def shell_like(cls: type, module: nn.Module) -> nn.Module:
    """A new ``cls`` instance that *shares* ``module``'s weight and bias Parameters.

    Sharing (not copying) keeps state-dict keys and optimizer identity, so checkpoints of the
    unconverted model load into the converted one. ``cls`` subclasses nn.Linear or nn.Conv2d.
    Converting a layer that is converted already (its adapters or bases would be lost) or not
    yet initialised (``nn.LazyLinear``) is refused; a plain ``cls`` (``unconvert``) takes any.
    """
    if isinstance(module, ConvertedLayer) and issubclass(cls, ConvertedLayer):
        raise TypeError(
            f"{cls.__name__}.from_module: {type(module).__name__} is converted already; convert "
            "the original layer (lbp_wht.unconvert gives it back)"
        )
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"{cls.__name__}.from_module: {type(module).__name__} has no weight yet; run one "
            "forward first so that its shape is known"
        )
    if issubclass(cls, nn.Conv2d):
        reason = conv1x1_problem(module)
        if reason is not None and not isinstance(module, nn.Conv2d):
            raise TypeError(f"{cls.__name__} needs an nn.Conv2d, got {type(module).__name__}")
        if reason is not None:
            raise ValueError(
                f"{cls.__name__} supports only 1x1 convolutions (stride 1, no padding, groups 1); "
                f"Conv2d({module.in_channels}, {module.out_channels}) has {reason}. "
                "Leave this layer unconverted (it is not a linear layer over tokens)."
            )
        attrs = _CONV_ATTRS
    else:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{cls.__name__} needs an nn.Linear, got {type(module).__name__}")
        attrs = ("in_features", "out_features")
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for attr in attrs:
        setattr(new, attr, getattr(module, attr))
    new.weight, new.bias = module.weight, module.bias
    new.train(module.training)
    return new


class ConvertedLayer:
    """What every converted layer (LBP-WHT, LoRA, both) shares.

    ``forward(x)`` is the layer's own call; :meth:`call_site` runs the same converted
    computation for a parent module that reads the layer's weight directly
    (``F.linear(x, self.qkv.weight, qkv_bias)``, e.g. attention with separate q / v biases), so
    that :func:`lbp_wht.convert` can route such call sites through the layer instead of
    silently bypassing it. ``converted_calls`` counts the calls that ran the converted path
    (the LBP-WHT function, or the LoRA adapters): a layer reported converted that never ran
    shows 0.
    """

    converted_calls: int = 0

    @property
    def _conv(self) -> bool:
        """A 1x1 convolution over NCHW maps (else a linear layer over the last dim)."""
        return isinstance(self, nn.Conv2d)

    def _plain(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The unconverted operation with ``bias``."""
        op = F.conv2d if self._conv else F.linear
        return op(x, self.weight, bias)  # type: ignore[attr-defined]

    def _check_features(self, x: torch.Tensor) -> None:
        """A clear error when ``x`` does not carry the layer's input features/channels."""
        dim, kind = (1, "in_channels") if self._conv else (-1, "in_features")
        expected = getattr(self, kind)
        if x.dim() <= max(dim, -dim - 1) or x.shape[dim] != expected:
            axis = "dim 1" if dim == 1 else "the last dim"
            raise ValueError(
                f"{self._what()}: input of shape {tuple(x.shape)} does not have {kind}="
                f"{expected} in {axis}; is the layer applied to the tensor it was converted for?"
            )

    def _what(self) -> str:
        return f"{type(self).__name__} {tuple(self.weight.shape)}"  # type: ignore[attr-defined]

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call_site(x, self.bias)  # type: ignore[attr-defined]

    def call_site(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer applied to ``x`` with ``bias`` in place of its own (a call site that
        computed ``F.linear(x, self.weight, bias)`` / ``F.conv2d(x, self.weight, bias)``)."""
        if self._conv and x.dim() == 3:  # an unbatched (C, H, W) map, as nn.Conv2d takes it
            return self._forward(x.unsqueeze(0), bias).squeeze(0)
        return self._forward(x, bias)


class BatchNormGuard:
    """Warns once, at the first LBP-WHT training step, if BatchNorm layers are in train mode.

    Train-mode BatchNorm normalises with batch statistics, which do not commute with the
    low-rank projection of the gradient; measured on EfficientNet-Lite0 this costs up to 40
    accuracy points. The fix is BatchNorm on running statistics (``norm_eval``), e.g.
    :func:`lbp_wht.keep_batchnorm_eval`. :func:`lbp_wht.convert` shares one guard between
    the LBP layers of a model; it checks when the first of them trains, after the model's own
    forward pre-hooks (which may switch BatchNorm to eval mode) have run.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.checked = False

    def check(self) -> None:
        if self.checked:
            return
        self.checked = True
        bn = [
            n
            for n, m in self.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
        ]
        if bn:
            shown = ", ".join(bn[:5]) + (f", ... ({len(bn)} in all)" if len(bn) > 5 else "")
            warnings.warn(
                f"LBP-WHT layers train while {len(bn)} BatchNorm layers are in train mode "
                f"({shown}). Batch statistics do not commute with the low-rank gradient "
                "projection (measured on EfficientNet-Lite0: up to 40 accuracy points lost). "
                "Keep BatchNorm on its running statistics: lbp_wht.keep_batchnorm_eval(model) "
                "(the paper's norm_eval=True).",
                stacklevel=4,
            )


@dataclass(frozen=True)
class LBPPlan:
    """What an LBP layer does with one input: the resolved map, and the projector (``None``
    while an LHE layer still profiles and runs exact backprop)."""

    map: ResolvedMap
    projector: WHTProjector | None


class LBPMixin(ConvertedLayer):
    """Shared state and forward of the LBP-WHT layers.

    Attributes:
        lbp_config: the :class:`LBPConfig`.
        geometry: the :class:`MapGeometry` (layout, prefix tokens, fixed map size).
        map_source: a :class:`MapSource` for the current map size, set by model adapters.
        bases: the selected ``(i, j)``; ``None`` while an LHE selection is still profiling
            (the layer then runs exact backprop, recording the spectrum of ``g_y`` when asked).
        record_spectrum: when True, every backward adds the ``(order, order)`` WHT energy
            spectrum of ``g_y`` to ``spectrum_energy`` and increments ``spectrum_steps``.
        lbp_name: qualified name inside the converted model (set by ``convert``), used in
            error messages.
        batchnorm_guard: a :class:`BatchNormGuard` shared by the model's LBP layers, or None.
    """

    def _init_lbp(self, config: LBPConfig | None, geometry: MapGeometry | None) -> None:
        config = LBPConfig() if config is None else config
        geometry = MapGeometry() if geometry is None else geometry
        if not isinstance(config, LBPConfig):
            raise TypeError(
                f"{type(self).__name__}: config must be an LBPConfig, got "
                f"{type(config).__name__} (build one with LBPConfig(**options))"
            )
        if not isinstance(geometry, MapGeometry):
            raise TypeError(
                f"{type(self).__name__}: geometry must be a MapGeometry, got "
                f"{type(geometry).__name__}"
            )
        allowed = ("auto", "nchw") if self._conv else ("auto", "tokens", "nhwc")
        if geometry.layout not in allowed:
            raise ValueError(
                f"{type(self).__name__} takes layout in {list(allowed)}, got {geometry.layout!r}"
            )
        self.lbp_config = config
        self.geometry = geometry
        self.map_source: MapSource | None = None
        self.bases: tuple[BaseIndex, ...] | None = config.selected_bases
        self.lbp_name = type(self).__name__
        self.record_spectrum = False
        self.spectrum_energy: torch.Tensor | None = None
        self.spectrum_steps = 0
        self.batchnorm_guard: BatchNormGuard | None = None
        self._projectors: dict[tuple[int, int], WHTProjector] = {}
        self._spectrum_projectors: dict[tuple[int, int], WHTProjector] = {}
        self._order_cache: dict[str, Any] = {}
        self._warned_no_bases = False

    # ---- configuration views (read-only; the config is frozen) ----------------------------
    @property
    def num_bases(self) -> int | None:
        """R, the number of bases (None while LHE is profiling)."""
        return None if self.bases is None else len(self.bases)

    @property
    def rank(self) -> int | None:
        """Same as :attr:`num_bases` (the name used by earlier code and the mmengine hooks)."""
        return self.num_bases

    @property
    def order(self) -> int:
        return self.lbp_config.order

    @property
    def prefix_tokens(self) -> int:
        return self.geometry.prefix_tokens

    @property
    def hw(self) -> tuple[int, int] | None:
        """The fixed map size, or None (then from ``map_source`` or the input)."""
        return self.geometry.hw

    @hw.setter
    def hw(self, value: tuple[int, int] | None) -> None:
        # Models that know their map size only at run time (e.g. Segformer's hw_shape) set it
        # before each call.
        if value != self.geometry.hw:  # layout, prefix tokens and token order stay
            self.geometry = replace(self.geometry, hw=value)

    # ---- bases ----------------------------------------------------------------------------
    def set_bases(self, bases: Sequence[Sequence[int]]) -> None:
        """Fix the bases (e.g. after LHE profiling); validated like an explicit selection.

        Bases that differ from the config's own selection are saved in the state dict.
        """
        self.bases = tuple(select_bases("explicit", order=self.order, indices=bases))
        self._projectors.clear()

    def reset_bases(self) -> None:
        """Back to the config's selection (``None`` for LHE: profile again)."""
        self.bases = self.lbp_config.selected_bases
        self._projectors.clear()

    def reset_spectrum(self) -> None:
        self.spectrum_energy, self.spectrum_steps = None, 0

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        if self.bases is not None and self.bases != self.lbp_config.selected_bases:
            destination[prefix + BASES_KEY] = torch.tensor(self.bases, dtype=torch.long)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # args: local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        key = prefix + BASES_KEY
        saved = state_dict.get(key)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        unexpected_keys, error_msgs = args[3], args[4]
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if saved is not None:
            try:
                if not isinstance(saved, torch.Tensor) or saved.dim() != 2 or saved.shape[1] != 2:
                    raise ValueError(f"expected an (R, 2) tensor, got {saved!r}")
                self.set_bases([tuple(int(v) for v in row) for row in saved.tolist()])
            except (TypeError, ValueError) as err:
                error_msgs.append(f"{key}: {err}")

    @classmethod
    def from_module(
        cls: type[_M],
        module: nn.Module,
        config: LBPConfig | None = None,
        *,
        geometry: MapGeometry | None = None,
    ) -> _M:
        """Wrap ``module`` (an nn.Linear, or a 1x1 nn.Conv2d for the conv classes) sharing its
        weight and bias (same state-dict keys)."""
        new: Any = shell_like(cls, module)
        new._init_lbp(config, geometry)
        return new

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._lbp_apply(x, bias, self._plain)

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"{super().extra_repr()}, lbp={self.lbp_config.describe()}, "  # type: ignore[misc]
            f"R={self.num_bases}, order={self.order}, padding={self.lbp_config.padding}, "
            f"layout={g.layout}, prefix_tokens={g.prefix_tokens}, hw={g.hw}"
        )

    # ---- geometry and plan (the public API that cost tracing uses) -------------------------
    def _what(self) -> str:
        return f"{self.lbp_name} ({type(self).__name__}, weight {tuple(self.weight.shape)})"

    def lbp_active(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` runs the LBP-WHT function: training, grad mode, and
        something (``x`` or a parameter) needs a gradient. Otherwise the layer is plain."""
        return (
            self.training
            and torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        )

    def resolve_map(self, x: torch.Tensor) -> ResolvedMap:
        """The map geometry of input ``x`` (a ``ValueError`` naming the layer if ambiguous)."""
        return resolve_map(
            x, self.geometry, conv=self._conv, what=self._what(), source=self.map_source
        )

    def projector_for(self, hw: tuple[int, int]) -> WHTProjector:
        """The (cached) projector of this layer's bases for an ``(H, W)`` map."""
        if self.bases is None:
            raise RuntimeError(f"{self._what()}: no bases yet (LHE still profiling)")
        if hw not in self._projectors:
            cfg = self.lbp_config
            self._projectors[hw] = WHTProjector(hw, self.bases, cfg.order, cfg.padding, cfg.impl)
        return self._projectors[hw]

    def lbp_plan(self, x: torch.Tensor) -> LBPPlan | None:
        """What a call on ``x`` would do: ``None`` when the layer runs plain (see
        :meth:`lbp_active`), else the resolved map and the projector."""
        if not self.lbp_active(x) or x.numel() == 0:
            return None
        m = self.resolve_map(x)
        return LBPPlan(m, None if self.bases is None else self.projector_for(m.hw))

    # ---- forward --------------------------------------------------------------------------
    def _record(self, g_y: torch.Tensor, m: ResolvedMap) -> None:
        from .functional import _as_map

        if m.layout == "tokens":
            g = g_y.reshape(-1, g_y.shape[-2], g_y.shape[-1])[:, m.prefix_tokens :]
            layout = "tokens"
        else:
            g, layout = _as_map(g_y, m.layout)
        proj = self._spectrum_projectors.get(m.hw)
        if proj is None:
            cfg = self.lbp_config
            proj = WHTProjector(m.hw, [(0, 0)], cfg.order, cfg.padding, "patch")
            self._spectrum_projectors[m.hw] = proj
        spec = proj.spectrum(g.detach(), layout).cpu()
        self.spectrum_energy = spec if self.spectrum_energy is None else self.spectrum_energy + spec
        self.spectrum_steps += 1

    def _lbp_apply(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        plain: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
        **lora: Any,
    ) -> torch.Tensor:
        """Run ``plain(x, bias)`` or the LBP function, with spectrum recording where asked."""
        self._check_features(x)
        if not self.lbp_active(x) or x.numel() == 0:  # an empty batch has nothing to project
            return plain(x, bias)
        m = self.resolve_map(x)
        self.converted_calls += 1
        if self.batchnorm_guard is not None:
            self.batchnorm_guard.check()
        if self.bases is None:  # LHE not chosen yet: exact backprop
            if not self.record_spectrum and not self._warned_no_bases:
                self._warned_no_bases = True
                warnings.warn(
                    f"{self._what()} has selection='lhe' but no bases yet and is not "
                    "profiling: it runs exact backprop. Profile with lbp_wht.lhe.LHEProfiler "
                    "or load a state dict that holds its lbp_bases.",
                    stacklevel=3,
                )
            y = plain(x, bias)
        else:
            x3 = x.reshape(-1, *x.shape[-2:]) if m.layout == "tokens" and x.dim() != 3 else x
            if m.order is not None:  # tokens in another order: project them row-major
                gather, scatter = self._order_index(m, x.device)
                x3 = _Permute.apply(x3, gather, scatter)
            y = lbp_forward(
                x3,
                self.weight,
                bias,
                self.projector_for(m.hw),
                m.layout,
                m.prefix_tokens,
                **lora,
            )
            if self.record_spectrum and y.requires_grad:
                y.register_hook(lambda g: self._record(g, m))
            if m.order is not None:
                y = _Permute.apply(y, scatter, gather)
            if y.dim() != x.dim():
                y = y.reshape(*m.lead, *y.shape[-2:])
            return y
        if self.record_spectrum and y.requires_grad:
            y.register_hook(lambda g: self._record(g, m))
        return y

    def _order_index(
        self, m: ResolvedMap, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token indices that read a non-row-major map in row-major order (prefix tokens
        first, kept in place) and their inverse."""
        key = (m.order, device)
        if self._order_cache.get("key") != key:
            e = m.prefix_tokens
            gather = torch.tensor([*range(e), *(e + k for k in m.order)], device=device)
            self._order_cache = {"key": key, "idx": (gather, torch.argsort(gather))}
        return self._order_cache["idx"]


class _Permute(torch.autograd.Function):
    """``x.index_select(-2, index)`` for a permutation ``index`` with inverse ``inverse``.

    The indices are the layer's cached constants, kept on the context as attributes: unlike
    ``index_select``, nothing is saved for backward per call.
    """

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.inverse = inverse
        return x.index_select(-2, index)

    @staticmethod
    def backward(ctx, g):
        return g.index_select(-2, ctx.inverse), None, None


class LBPLinear(LBPMixin, nn.Linear):
    """``nn.Linear`` over a token map whose backward uses LBP-WHT.

    Input ``(B, E + H*W, in_features)`` tokens (``E`` prefix tokens, see ``geometry``),
    ``(B, H, W, in_features)`` with ``layout="nhwc"``, or ``(..., L, in_features)`` with
    ``layout="tokens"`` (leading dims flattened into the batch, e.g. Swin's windows).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: LBPConfig | None = None,
        *,
        geometry: MapGeometry | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_lbp(config, geometry)


class LBPConv2d(LBPMixin, nn.Conv2d):
    """1x1 ``nn.Conv2d`` (NCHW) whose backward uses LBP-WHT; any other kernel is an error."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        config: LBPConfig | None = None,
        *,
        geometry: MapGeometry | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype
        )
        self._init_lbp(config, geometry)
