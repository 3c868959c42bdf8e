"""The training methods: one :class:`MethodSpec` per method id, in :data:`METHOD_SPECS`.

Standard library only (the vocabulary re-exports it and is imported without torch). Every
fact about a method lives in its entry (the fields of :class:`MethodSpec`); the harness reads
its flags (``method_spec(m).has_lora``, ``.converts``, ``.trains``, ...) and no other module
compares method ids as strings (``tests/test_methods.py`` checks it). Adding a method is one
entry here, plus ``python tools/gen_configs.py`` for configs that use it (and, where it needs
a layer class the core lacks, that layer in the core).

=================== =========== ====== ========== ==========================================
method              converts    layers trains     label / config tag
=================== =========== ====== ========== ==========================================
head_only           nothing     --     head       Head only / head-only (linear probe)
full_bp             nothing     --     scope      Full BP / full-bp (the reference)
lora                lora        attn   adapters   LoRA / lora
lora_all            lora        all    adapters   LoRA-all / lora-all
losa                nothing     --     side       LoSA / losa (a side network, lbp_wht.losa)
lbp_wht             lbp         all    scope      LP_L1-4 / lp-l1-r4 (its base selection)
lbp_wht+lora_all    lbp_lora    all    adapters   LP_L1-4 + LoRA-all / lp-l1-r4+lora-all
lora_fa             lora_fa     all    adapters   LoRA-FA / lora-fa (frozen A, trained B)
velora              velora      all    scope      VeLoRA / velora (rank-1 sub-token x for g_w)
wta_crs             wta_crs     all    scope      WTA-CRS / wta-crs (k sampled rows for g_w)
hot                 hot         all    scope      HOT / hot (Hadamard low-rank g_w, INT4 g_x)
instant             instant     all    scope      INSTANT / instant (calibrated subspaces)
=================== =========== ====== ========== ==========================================

The last five are LBP-WHT's successors (``successor=True``, not paper rows): their options are
``lbp.options`` (the core rule's keys, e.g. ``dict(keep_fraction=0.3)``), built once into the
core's typed config and put into the rules under the method's own name.

``trains``: ``head`` the task head only; ``scope`` every parameter of the trained scope (the
last stage + head, or everything); ``adapters`` the LoRA adapters + the task head (or, with
``lora_train="scope"``, + every non-LoRA parameter of the scope); ``side`` the side network
``losa.*`` + the task head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MethodSpec",
    "METHOD_SPECS",
    "CONVERSION_KINDS",
    "SUCCESSOR_CONVERSIONS",
    "TRAINS",
    "LAYERS",
    "SCOPES",
    "DEFAULT_LORA_RANK",
    "DEFAULT_LOSA_RANK",
    "method_spec",
    "method_with",
]

#: The core's rule methods of the successors (``lbp_wht.conversion``): each takes its options
#: as one typed config (``LoRAFAConfig``, ``VeLoRAConfig``, ``WTACRSConfig``, ``HOTConfig``,
#: ``INSTANTConfig``).
SUCCESSOR_CONVERSIONS: tuple[str, ...] = ("lora_fa", "velora", "wta_crs", "hot", "instant")
#: The rule methods of the core (``lbp_wht.conversion.CONVERSIONS``; a test checks the two
#: agree): ``lbp`` (LBP-WHT layers), ``lora`` (LoRA layers), ``lbp_lora`` (both), and the
#: successors.
CONVERSION_KINDS: tuple[str, ...] = ("lbp", "lora", "lbp_lora", *SUCCESSOR_CONVERSIONS)
#: What a method trains (module docstring).
TRAINS: tuple[str, ...] = ("head", "scope", "adapters", "side")
#: Which of a preset's layers a converting method converts: ``attn`` the attention
#: projections, ``all`` every layer of the preset's table.
LAYERS: tuple[str, ...] = ("attn", "all")
#: ``partial``: the last stage and the task head train (plus Segformer's decode head), the
#: rest is frozen; ``full``: the whole model trains (``vocab.SCOPES`` is this tuple).
SCOPES: tuple[str, ...] = ("partial", "full")
#: LoRA rank of the paper's baselines (alpha equal to it: scaling 1). Standard-library copies
#: of the core's defaults (``LoRAConfig.rank``, ``lbp_wht.losa.DEFAULT_RANK``) for the labels
#: and R columns; ``tests/test_param_path.py`` checks they are equal.
DEFAULT_LORA_RANK = 8
#: Rank of LoSA's low-rank mixers (the same as the LoRA baselines').
DEFAULT_LOSA_RANK = 8


@dataclass(frozen=True)
class MethodSpec:
    """A training method.

    Attributes:
        id: the name configs (``lbp.method``), run ids, run records and tables use.
        label: row label (``Full BP``); for a method with WHT bases the method's name
            (``LBP-WHT``): its rows are labelled by their base selection (``LP_L1-4``).
        tag: config-file-name tag (``full-bp``); empty for a method with bases, whose
            selection names it (``lp-l1-r4``; :attr:`combined` adds its suffix).
        conversion: the core's rule method for the converted layers (``"lbp"``, ``"lora"``,
            ``"lbp_lora"``), or None: nothing is converted.
        trains: ``"head"``, ``"scope"``, ``"adapters"`` or ``"side"`` (module docstring).
        paper: a method of the paper's tables (False: a baseline of our own).
        layers: which layers of the preset's table it converts: ``"attn"`` (attention
            projections) or ``"all"``.
        lhe: offers ``select="lhe"`` (methods with bases only).
        combined: the baseline a method with bases is combined with (``lora_all``): its label
            and tag follow the selection's (``LP_L1-4 + LoRA-all``, ``lp-l1-r4+lora-all``).
        rank: the "R" column of a method without bases: the default rank of its adapters or
            side network (None: no R).
        reference: the exact-backprop baseline that speedups and cost ratios divide by (one
            method has it).
        authors_options: ``--cfg-options`` beside ``lbp.variant='authors'`` that reproduce
            the authors' configs for this method (LoRA-all: their freeze,
            ``lbp.lora_train='scope'``; ``lbp_wht.reporting.cost_tables.authors_options``).
        detail: what experiment titles say after the label.
        scopes: the scopes it is defined for; ``scope_note``: why not the others (an error
            says ``method '<id>' <scope_note>``).
        successor: a later method of efficient backprop (the benchmark's rows beside the
            paper's).
        cite: the paper of a method the LBP-WHT paper does not have (a successor, LoSA).
    """

    id: str
    label: str
    tag: str
    conversion: str | None
    trains: str
    paper: bool
    layers: str = "all"
    lhe: bool = True
    combined: str = ""
    rank: int | None = None
    reference: bool = False
    authors_options: tuple[tuple[str, str], ...] = ()
    detail: str = ""
    scopes: tuple[str, ...] = SCOPES
    scope_note: str = ""
    successor: bool = False
    cite: str = ""

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"method {self.id!r}: {what}")

        if self.conversion is not None and self.conversion not in CONVERSION_KINDS:
            raise bad(f"conversion {self.conversion!r}: one of {list(CONVERSION_KINDS)} or None")
        if self.trains not in TRAINS:
            raise bad(f"trains={self.trains!r}; choose one of {list(TRAINS)}")
        if self.layers not in LAYERS:
            raise bad(f"layers={self.layers!r}; choose one of {list(LAYERS)}")
        if (self.trains == "adapters") != self.has_adapters:
            raise bad("its adapters train exactly when it has adapters (trains='adapters')")
        if self.has_bases == bool(self.tag):
            raise bad("a method with bases has no tag of its own (its selection names it)")
        if self.combined and not self.has_bases:
            raise bad("only a method with bases is combined with another")
        if not self.scopes or not set(self.scopes) <= set(SCOPES):
            raise bad(f"scopes {self.scopes} not within {SCOPES}")

    @property
    def converts(self) -> bool:
        """Converts layers of the model (by rules of :attr:`conversion`)."""
        return self.conversion is not None

    @property
    def has_bases(self) -> bool:
        """Projects gradients onto WHT bases: takes ``select`` and ``r`` / ``rank``."""
        return self.conversion in ("lbp", "lbp_lora")

    @property
    def has_lora(self) -> bool:
        """Puts LoRA adapters into the model (``lora_rank`` / ``lora_alpha`` apply)."""
        return self.conversion in ("lora", "lbp_lora")

    @property
    def has_adapters(self) -> bool:
        """Puts low-rank adapters in (LoRA's, or LoRA-FA's with a frozen ``A``): ``lora_rank``
        / ``lora_alpha`` apply and the adapters train."""
        return self.conversion in ("lora", "lbp_lora", "lora_fa")

    @property
    def has_options(self) -> bool:
        """Takes ``lbp.options``: the options of a successor's core rule."""
        return self.conversion in SUCCESSOR_CONVERSIONS

    @property
    def bases_only(self) -> bool:
        """Projects onto WHT bases and adds nothing else (LBP-WHT itself, not combined)."""
        return self.has_bases and not self.combined

    @property
    def lora_only(self) -> bool:
        """Puts LoRA adapters in and nothing else (the LoRA baselines)."""
        return self.has_lora and not self.has_bases

    @property
    def side_network(self) -> bool:
        """Attaches LoSA's side network (:mod:`lbp_wht.losa`) instead of converting layers."""
        return self.trains == "side"

    def trainable_globs(
        self,
        head: Sequence[str],
        scope: Sequence[str],
        adapter_targets: Sequence[str] = (),
        *,
        adapters_with_scope: bool = False,
    ) -> list[str]:
        """The parameter globs that train under this method (for :func:`lbp_wht.freeze`).

        ``head``: the task head's globs; ``scope``: the trained part's (head included);
        ``adapter_targets``: the converted layers' names or globs, whose ``lora_A`` / ``lora_B``
        train in the adapter methods, beside the head (or the whole scope with
        ``adapters_with_scope``, the LoRA variants' ``lora_train="scope"``).
        """
        if self.trains == "head":
            return list(head)
        if self.trains == "side":
            return ["losa.*", *head]
        if self.trains == "scope":
            return list(scope)
        lora = [f"{t}.lora_{ab}" for t in adapter_targets for ab in ("A", "B")]
        return lora + list(scope if adapters_with_scope else head)

    def core_rule(
        self,
        target: str,
        *,
        select: str | None = None,
        r: int | None = None,
        lora_rank: int = DEFAULT_LORA_RANK,
        options: dict | None = None,
    ) -> dict | None:
        """The ``lbp_wht.convert`` rule that applies this method to the layers ``target``
        matches, outside the presets (a plain model, one layer): WHT bases by ``select``
        (default ``lp_l1``) and ``r`` (the radius; the number of bases for ``lhe``), LoRA
        adapters of rank ``lora_rank`` with alpha equal to it (scaling 1, as the paper's
        baselines), a successor's ``options``. None for a method that converts nothing."""
        if not self.converts:
            return None
        rule: dict = dict(target=target, method=self.conversion)
        if self.has_bases:
            select = select or "lp_l1"
            rule.update({"selection": select, "num_bases" if select == "lhe" else "radius": r})
        if self.has_adapters:
            rule.update(lora_rank=lora_rank, lora_alpha=lora_rank)
        rule.update(options or {})
        return rule

    @property
    def name(self) -> str:
        """The label with what it is combined with: ``LBP-WHT + LoRA-all``."""
        return self.label + self.combined_label

    @property
    def combined_label(self) -> str:
        """`` + LoRA-all`` for a combined method, else ``""``."""
        return f" + {method_spec(self.combined).label}" if self.combined else ""

    @property
    def combined_tag(self) -> str:
        """``+lora-all`` for a combined method, else ``""``."""
        return f"+{method_spec(self.combined).tag}" if self.combined else ""


_R, _S = DEFAULT_LORA_RANK, DEFAULT_LOSA_RANK
#: Every method, in the order table rows use. ``head_only`` (linear probe: only the task head
#: trains) and ``losa`` (low-rank side adaptation, a side network beside the frozen backbone,
#: no backprop through it) are not paper rows: the CPU mini-reproduction reports them.
METHOD_SPECS: dict[str, MethodSpec] = {
    m.id: m
    for m in (
        MethodSpec("head_only", "Head only", "head-only", None, "head", False),
        MethodSpec("full_bp", "Full BP", "full-bp", None, "scope", True, reference=True),
        MethodSpec(
            "lora", "LoRA", "lora", "lora", "adapters", True, layers="attn", rank=_R,
            detail=f" (attention projections, rank {_R})",
        ),
        MethodSpec(
            "lora_all", "LoRA-all", "lora-all", "lora", "adapters", True, rank=_R,
            detail=f" (all converted layers, rank {_R})",
            authors_options=(("lbp.lora_train", "scope"),),
        ),
        MethodSpec(
            "losa", "LoSA", "losa", None, "side", False, rank=_S,
            detail=f" (low-rank side network on the last stage's blocks, rank {_S}; "
            "a baseline beyond the paper)",
            scopes=("partial",),
            scope_note="taps the blocks of the last stage (its token mixer needs one token "
            "count)",
            cite="Mercea et al., CVPR 2024",
        ),
        MethodSpec("lbp_wht", "LBP-WHT", "", "lbp", "scope", True),
        MethodSpec(
            "lbp_wht+lora_all", "LBP-WHT", "", "lbp_lora", "adapters", True, lhe=False,
            combined="lora_all",
        ),
        MethodSpec(
            "lora_fa", "LoRA-FA", "lora-fa", "lora_fa", "adapters", False, rank=_R,
            detail=f" (LoRA with A frozen, all converted layers, rank {_R})", successor=True,
            cite="Zhang et al. 2023, arXiv 2308.03303",
        ),
        MethodSpec(
            "velora", "VeLoRA", "velora", "velora", "scope", False, successor=True,
            detail=" (x saved as rank-1 sub-token coefficients for g_w)",
            cite="Miles et al., NeurIPS 2024, arXiv 2405.17991",
        ),
        MethodSpec(
            "wta_crs", "WTA-CRS", "wta-crs", "wta_crs", "scope", False, successor=True,
            detail=" (g_w from sampled token rows)",
            cite="Liu et al., NeurIPS 2023, arXiv 2305.15265",
        ),
        MethodSpec(
            "hot", "HOT", "hot", "hot", "scope", False, successor=True,
            detail=" (Hadamard low-rank g_w on an INT8 buffer, Hadamard INT4 g_x, simulated)",
            cite="Kim et al., CVPR 2025, arXiv 2503.21261",
        ),
        MethodSpec(
            "instant", "INSTANT", "instant", "instant", "scope", False, successor=True,
            detail=" (x and g_y in calibrated low-rank channel subspaces)",
            cite="ICLR 2026, OpenReview P2q6Y7UweV",
        ),
    )
}  # fmt: skip


def method_spec(method: str | MethodSpec) -> MethodSpec:
    """The :class:`MethodSpec` of ``method``; a ValueError naming the known ids otherwise."""
    if isinstance(method, MethodSpec):
        return method
    try:
        return METHOD_SPECS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHOD_SPECS)}") from None


def method_with(**flags: object) -> str:
    """The id of the one method whose flags (fields or properties) have these values:
    ``method_with(reference=True)`` is ``full_bp``, ``method_with(bases_only=True)``
    ``lbp_wht``. A ValueError if none or several match (a role must name one method)."""
    found = [
        m.id for m in METHOD_SPECS.values() if all(getattr(m, k) == v for k, v in flags.items())
    ]
    if len(found) != 1:
        raise ValueError(f"{len(found)} methods have {flags} ({found}); a role names one")
    return found[0]
