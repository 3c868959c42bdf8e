"""The models: one :class:`ModelSpec` per model id, in :data:`MODEL_SPECS`.

Standard library only (the vocabulary re-exports it and is imported without torch). Every
fact about a model lives in its entry (the fields of :class:`ModelSpec`); the harness reads
them (``model_spec(m).task``, ``.arch``, ``.layer_table(scope)``, ...) and no other module
compares model ids as strings (``tests/test_models.py`` checks it). Adding a model of a known
architecture is one entry here, plus ``python tools/gen_configs.py``; a new architecture adds
its builder to ``presets._BUILDERS`` (and its backbone wrapper to
``lbp_wht.integrations.models`` where the stock one cannot be converted).

==================== ================= ==== ==== ====== ========================
model                arch              task side layers checkpoint
==================== ================= ==== ==== ====== ========================
efficientformer-l1   EfficientFormer   cls  224  32/10  mmpretrain zoo
efficientformer-l7   EfficientFormer   cls  224  92/32  mmpretrain zoo
efficientformerv2-s0 EfficientFormerV2 cls  224  56/20  timm (converted)
efficientformerv2-l  EfficientFormerV2 cls  224  146/56 timm (converted)
swinv2-small-w8      SwinV2            cls  256  99/9   mmpretrain zoo
segformer-mit-b0     Segformer         seg  512  53/17  mmseg zoo
mini-efficientformer EfficientFormer   cls  28   18/10  none (CPU, random init)
mini-segformer       Segformer         seg  128  (b0's) none (CPU, random init)
==================== ================= ==== ==== ====== ========================

(``layers``: how many layers LBP-WHT converts in full / partial training; partial training
trains the last stage and the task head, plus Segformer's decode head; ``(b0's)``: the mini
Segformer uses the presets of ``segformer-mit-b0``, whose module names it shares.)

Layer choices follow the authors' experiment configurations (``docs/PAPER_NOTES.md``; why
each, in the docstring of :mod:`lbp_wht.experiments.presets`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .methods import SCOPES

__all__ = [
    "Layer",
    "LoSATaps",
    "Checkpoint",
    "ModelSpec",
    "MODEL_SPECS",
    "TASKS",
    "ARCHS",
    "LAYER_KINDS",
    "MINI_EFFICIENTFORMER_ARCH",
    "MMPRETRAIN_ZOO",
    "MMSEG_ZOO",
    "model_spec",
    "preset_models",
]

#: ``cls``: an mmpretrain ``ImageClassifier``; ``seg``: an mmseg ``EncoderDecoder``.
TASKS: tuple[str, ...] = ("cls", "seg")
#: The architectures :func:`lbp_wht.experiments.presets.model_config` builds (its
#: ``_BUILDERS``; a test checks the two agree). A spec's :attr:`ModelSpec.definition` holds
#: the builder's arguments.
ARCHS: tuple[str, ...] = ("EfficientFormer", "EfficientFormerV2", "SwinV2", "Segformer")
#: ``attn``: an attention projection (LoRA in every LoRA variant); ``other``: FFN /
#: reduction / decoder 1x1 (LBP-WHT and LoRA-all only).
LAYER_KINDS: tuple[str, ...] = ("attn", "other")

MMPRETRAIN_ZOO = "https://download.openmmlab.com/mmclassification/v0"
MMSEG_ZOO = "https://download.openmmlab.com/mmsegmentation/v0.5"


class Layer(NamedTuple):
    """One row of a model's layer table.

    Attributes:
        glob: module-name glob over the whole OpenMMLab model (``*`` also matches dots);
            ``{stage}`` stands for the trained stage's prefix (:attr:`ModelSpec.stage`).
        kind: ``"attn"`` or ``"other"`` (:data:`LAYER_KINDS`).
        fused: projections fused in the layer (qkv: 3); scales the LoRA rank and alpha.
        scopes: the scopes whose table has the row (EfficientFormerV2's attention
            downsampling: full training only).
        layout: the map the paper's configurations declare for the layer instead of the
            input's positions (EfficientFormerV2's talking heads mix the heads of the N x N
            attention scores, projected as an N x N image: ``"nchw"``), or ``""``.
    """

    glob: str
    kind: str
    fused: int = 1
    scopes: tuple[str, ...] = SCOPES
    layout: str = ""


class LoSATaps(NamedTuple):
    """``method="losa"``: the containers whose parameter-holding children are the side
    network's taps (:func:`lbp_wht.losa.find_blocks`) and the module whose output the head
    reads and the side network corrects."""

    containers: tuple[str, ...]
    output: str


class Checkpoint(NamedTuple):
    """A model's pretrained checkpoint (:mod:`lbp_wht.experiments.pretrained`): its file under
    ``checkpoints/`` (the configs' ``load_from``), and a direct download (a model zoo) or the
    timm model it is converted from."""

    file: str
    url: str = ""
    timm: str = ""

    @property
    def source(self) -> str:
        return self.url or f"timm {self.timm}"


@dataclass(frozen=True)
class ModelSpec:
    """A model.

    Attributes:
        id: the name configs, presets, run records and tables use.
        name: display name (``EfficientFormer-L1``).
        family: architecture family shown in tables (``Hybrid``, ``ViT``; ``""``: none).
        task: ``"cls"`` or ``"seg"`` (:data:`TASKS`).
        paper: a model of the paper's tables (False: a CPU-sized mini model).
        img_size: input side in pixels (segmentation: the square crop side); the resolution
            of its experiments and of cost records that do not name one.
        arch: its architecture (:data:`ARCHS`): which builder of ``model_config`` defines it.
        definition: the builder's arguments (``model_config`` copies them).
        base_classes: classes of the head in its generated model base (the pretrained head's;
            the experiment configs set the target's).
        in_channels: input channels when not 3 (the mini EfficientFormer's Fashion-MNIST: 1).
        preset: the model whose presets apply (itself, unless it is a stand-in that shares
            another model's module names: ``mini-segformer``).
        stage: the prefix ``{stage}`` stands for in the layer table's globs, per scope
            (``partial``, ``full``).
        layers: the layer table (which layers LBP-WHT / LoRA-all convert; LoRA: the ``attn``
            rows); empty for a stand-in.
        authors_layers: the table of the ``authors`` variant (what the authors' code really
            converted), or None: the same as :attr:`layers`.
        partial: parameter globs partial training trains (the last stage and the head).
        head: the task head's parameter globs.
        norm_eval: BatchNorm on running statistics while training (the presets' default).
        losa: LoSA's taps, or None (no LoSA preset: segmentation).
        notes: what a preset notes about building the model; ``authors_notes``: what it adds
            for the ``authors`` variant.
        checkpoint: the pretrained checkpoint its experiment configs load, or None.
        description: what its generated model base says about it.
        latency_shapes: per-layer latency shapes ``(Cx, Cy, L)`` (Table 8: MLP fc1, fc2 of the
            last Meta3D block), or empty.
        table5_extra_r: the LP_L1 radii of Table 5 beyond 2, 4, 6, 8 for this model.
    """

    id: str
    name: str
    family: str
    task: str
    paper: bool
    img_size: int
    arch: str
    definition: dict[str, Any] = field(default_factory=dict, hash=False)
    base_classes: int = 1000
    in_channels: int | None = None
    preset: str = ""
    stage: tuple[str, str] = ("", "")
    layers: tuple[Layer, ...] = ()
    authors_layers: tuple[Layer, ...] | None = None
    partial: tuple[str, ...] = ()
    head: tuple[str, ...] = ("head.*",)
    norm_eval: bool = True
    losa: LoSATaps | None = None
    notes: tuple[str, ...] = ()
    authors_notes: tuple[str, ...] = ()
    checkpoint: Checkpoint | None = None
    description: str = ""
    latency_shapes: tuple[tuple[int, ...], ...] = ()
    table5_extra_r: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"model {self.id!r}: {what}")

        if not self.preset:
            object.__setattr__(self, "preset", self.id)
        if self.task not in TASKS:
            raise bad(f"task={self.task!r}; choose one of {list(TASKS)}")
        if self.arch not in ARCHS:
            raise bad(f"arch={self.arch!r}; choose one of {list(ARCHS)}")
        if self.has_preset != bool(self.layers):
            raise bad("a model has a layer table exactly when it is its own preset")
        if self.has_preset and not (self.partial and self.head and all(self.stage)):
            raise bad("a preset model names its stage prefixes, partial scope and head")
        for layer in (*self.layers, *(self.authors_layers or ())):
            if layer.kind not in LAYER_KINDS:
                raise bad(f"layer {layer.glob!r}: kind={layer.kind!r}; one of {LAYER_KINDS}")
            if not layer.scopes or not set(layer.scopes) <= set(SCOPES):
                raise bad(f"layer {layer.glob!r}: scopes {layer.scopes} not within {SCOPES}")

    @property
    def label(self) -> str:
        """``name (family)``, or the name alone for models without a family tag."""
        return f"{self.name} ({self.family})" if self.family else self.name

    @property
    def has_preset(self) -> bool:
        """Has presets of its own (``get_preset(model=...)``); else it uses :attr:`preset`'s."""
        return self.preset == self.id

    def layer_table(self, scope: str, variant: str = "corrected") -> list[Layer]:
        """The rows of the layer table for ``scope`` (``{stage}`` filled in); the ``authors``
        variant's rows with ``variant="authors"`` where the model has them."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; choose one of {list(SCOPES)}")
        rows = self.layers
        if variant == "authors" and self.authors_layers is not None:
            rows = self.authors_layers
        stage = self.stage[SCOPES.index(scope)]
        return [
            layer._replace(glob=layer.glob.replace("{stage}", stage))
            for layer in rows
            if scope in layer.scopes
        ]

    def builder_args(self) -> dict[str, Any]:
        """A deep copy of :attr:`definition` (the builders may keep or edit it)."""
        return copy.deepcopy(self.definition)


# ----------------------------------------------------------------------------- definitions
#: mmpretrain ``EfficientFormer`` arch for a CPU-sized model on 28x28 inputs: the stride-4 stem
#: gives a 7x7 map (the size Meta3D's attention biases require) and no stage downsamples, so
#: all widths are equal. The last stage mirrors L1's: 3 Meta4D blocks, then Flat + 1 Meta3D
#: block. Use with ``EfficientFormer(arch=MINI_EFFICIENTFORMER_ARCH)`` (copy it if you edit).
#: The source of truth for the general mini model: ``model_config`` and
#: ``configs/_base_/models/mini-efficientformer.py`` (the ``configs/mini/*.py`` experiments) use
#: exactly this arch (a test checks the config against it). The CPU demo (``make demo``,
#: ``configs/mini/demo/_base_/model.py``) deliberately builds a lighter variant of the same
#: structure, 48 channels and 1/1/1/2 blocks (last stage: 1 Meta4D + 1 Meta3D block), calibrated
#: so that all of its adaptation runs fit the 20-minute budget on 2 cores (a training step costs
#: about half as much); the preset's globs (``backbone.network.3.*``, Meta4D / Meta3D layer
#: names) hold for both, so both use the ``mini-efficientformer`` preset.
MINI_EFFICIENTFORMER_ARCH: dict[str, Any] = {
    "layers": [1, 1, 2, 4],
    "embed_dims": [64, 64, 64, 64],
    "downsamples": [False, False, False, False],
    "vit_num": 1,
}

# ----------------------------------------------------------------------------- layer tables
# mmpretrain EfficientFormer: backbone.network.<stage>.<block>; Meta4D blocks have mlp.fc1/fc2
# as 1x1 convs, the Meta3D blocks (stage 3 only) token_mixer.qkv/proj and mlp.fc1/fc2 as
# linears, so the mlp globs cover both block types.
_EF_STAGE = ("backbone.network.3.*.", "backbone.network.*.*.")
_EF_LAYERS = (
    Layer("{stage}token_mixer.qkv", "attn", 3),
    Layer("{stage}token_mixer.proj", "attn"),
    Layer("{stage}mlp.fc1", "other"),
    Layer("{stage}mlp.fc2", "other"),
)
_EF_LOSA = LoSATaps(("backbone.network.3",), "backbone.norm3")
_EF_PARTIAL = ("backbone.network.3.*", "head.*")
_EF_NOTE = "mmpretrain implementation. The ImageNet distillation head is not used for fine-tuning."

# timm EfficientFormerV2 inside TimmEfficientFormerV2: backbone.timm_model.stages.<i>. ConvNorm
# layers hold the conv as ``.conv``; talking heads are plain 1x1 convs over heads. Full
# training adds the attention downsampling (authors' network.5; q = local dw-conv + pool + 1x1
# proj); partial training trains the authors' network.6 = stages.3.blocks.
_V2_STAGE = ("backbone.timm_model.stages.3.blocks.*.", "backbone.timm_model.stages.*.blocks.*.")
_V2_DOWN = "backbone.timm_model.stages.*.downsample.attn."
_V2_LAYERS = (
    Layer("{stage}token_mixer.q.conv", "attn"),
    Layer("{stage}token_mixer.k.conv", "attn"),
    Layer("{stage}token_mixer.v.conv", "attn"),
    Layer("{stage}token_mixer.proj.conv", "attn"),
    Layer("{stage}token_mixer.talking_head1", "attn", layout="nchw"),
    Layer("{stage}token_mixer.talking_head2", "attn", layout="nchw"),
    Layer("{stage}mlp.fc1.conv", "other"),
    Layer("{stage}mlp.fc2.conv", "other"),
    Layer(_V2_DOWN + "q.proj.conv", "attn", scopes=("full",)),
    Layer(_V2_DOWN + "k.conv", "attn", scopes=("full",)),
    Layer(_V2_DOWN + "v.conv", "attn", scopes=("full",)),
    Layer(_V2_DOWN + "proj.conv", "attn", scopes=("full",)),
)
_V2_LOSA = LoSATaps(("backbone.timm_model.stages.3.blocks",), "backbone.timm_model.norm")
_V2_PARTIAL = ("backbone.timm_model.stages.3.blocks.*", "head.*")
_V2_NOTE = "build the backbone as TimmEfficientFormerV2 (timm efficientformerv2)"
_V2_DESCRIPTION = (
    "timm implementation wrapped as an mmpretrain backbone (module names "
    "backbone.timm_model.stages.<i>...). Input must be 224x224."
)

# mmseg MixVisionTransformerConvertible: backbone.layers.<stage> = [patch_embed, blocks, norm];
# block attention has explicit q/k/v/proj; MixFFN layers = [fc1, pe_conv, act, drop, fc2,
# drop]. SegformerHead: convs.<i>.conv (1x1 per level), fusion_conv.conv.
_SEG_STAGE = ("backbone.layers.3.1.*.", "backbone.layers.*.1.*.")


def _segformer(mini: bool) -> dict[str, Any]:
    """Segformer's builder arguments (mmseg ``configs/_base_/models/segformer_mit-b0.py``;
    mini: a CPU-sized MiT with four 1-block stages and the same module names)."""
    return dict(
        embed_dims=8 if mini else 32,
        num_layers=[1, 1, 1, 1] if mini else [2, 2, 2, 2],
        # channels = embed_dims * num_heads
        num_heads=[1, 2, 4, 8] if mini else [1, 2, 5, 8],
        mlp_ratio=2 if mini else 4,
        drop_path_rate=0.0 if mini else 0.1,
        decoder_in_channels=[8, 16, 32, 64] if mini else [32, 64, 160, 256],
        decoder_channels=32 if mini else 256,
        # SyncBN for multi-GPU training, except the CPU mini model (it also trains
        # distributed on CPU, where SyncBN cannot run).
        sync_bn=not mini,
    )


def _cls_shapes(c: int) -> tuple[tuple[int, ...], ...]:
    """Table 8's shapes: MLP fc1 and fc2 of the last Meta3D block, on its 7x7 tokens."""
    return ((c, 4 * c, 49), (4 * c, c, 49))


#: Every model, in the order the paper's tables list them.
MODEL_SPECS: dict[str, ModelSpec] = {
    m.id: m
    for m in (
        ModelSpec(
            "efficientformer-l1", "EfficientFormer-L1", "Hybrid", "cls", True, 224,
            "EfficientFormer", dict(arch="l1", channels=448),
            stage=_EF_STAGE, layers=_EF_LAYERS, partial=_EF_PARTIAL, losa=_EF_LOSA,
            checkpoint=Checkpoint(
                "efficientformer-l1_3rdparty_in1k_20220915-cc3e1ac6.pth",
                url=f"{MMPRETRAIN_ZOO}/efficientformer/"
                "efficientformer-l1_3rdparty_in1k_20220915-cc3e1ac6.pth",
            ),
            description="EfficientFormer-L1 (Li et al., NeurIPS 2022; hybrid CNN-ViT), "
            + _EF_NOTE,
            latency_shapes=_cls_shapes(448),
            table5_extra_r=(7,),
        ),
        ModelSpec(
            "efficientformer-l7", "EfficientFormer-L7", "Hybrid", "cls", True, 224,
            "EfficientFormer", dict(arch="l7", channels=768),
            stage=_EF_STAGE, layers=_EF_LAYERS, partial=_EF_PARTIAL, losa=_EF_LOSA,
            checkpoint=Checkpoint(
                "efficientformer-l7_3rdparty_in1k_20220915-185e30af.pth",
                url=f"{MMPRETRAIN_ZOO}/efficientformer/"
                "efficientformer-l7_3rdparty_in1k_20220915-185e30af.pth",
            ),
            description="EfficientFormer-L7 (Li et al., NeurIPS 2022; hybrid CNN-ViT), "
            + _EF_NOTE,
            latency_shapes=_cls_shapes(768),
        ),
        ModelSpec(
            "efficientformerv2-s0", "EfficientFormerV2-S0", "Hybrid", "cls", True, 224,
            "EfficientFormerV2", dict(arch="s0", channels=176),
            stage=_V2_STAGE, layers=_V2_LAYERS, partial=_V2_PARTIAL, losa=_V2_LOSA,
            notes=(_V2_NOTE,),
            checkpoint=Checkpoint(
                "efficientformerv2_s0_timm_in1k.pth", timm="efficientformerv2_s0.snap_dist_in1k"
            ),
            description="EfficientFormerV2-S0 (Li et al., ICCV 2023; hybrid), " + _V2_DESCRIPTION,
            table5_extra_r=(7,),
        ),
        ModelSpec(
            "efficientformerv2-l", "EfficientFormerV2-L", "Hybrid", "cls", True, 224,
            "EfficientFormerV2", dict(arch="l", channels=384),
            stage=_V2_STAGE, layers=_V2_LAYERS, partial=_V2_PARTIAL, losa=_V2_LOSA,
            notes=(_V2_NOTE,),
            checkpoint=Checkpoint(
                "efficientformerv2_l_timm_in1k.pth", timm="efficientformerv2_l.snap_dist_in1k"
            ),
            description="EfficientFormerV2-L (Li et al., ICCV 2023; hybrid), " + _V2_DESCRIPTION,
        ),
        ModelSpec(
            "swinv2-small-w8", "SwinV2-Small", "ViT", "cls", True, 256,
            "SwinV2",
            dict(arch="small", img_size=256, window_size=[8, 8, 8, 8], channels=768),
            # mmpretrain SwinTransformerV2: backbone.stages.<i>.{downsample, blocks.<j>}; the
            # downsample (patch merging) opens stages 1-3. FFN = mmcv FFN: layers.0.0, layers.1.
            stage=("backbone.stages.3.", "backbone.stages.*."),
            layers=(
                Layer("{stage}blocks.*.attn.w_msa.qkv", "attn", 3),
                Layer("{stage}blocks.*.attn.w_msa.proj", "attn"),
                Layer("{stage}blocks.*.ffn.layers.0.0", "other"),
                Layer("{stage}blocks.*.ffn.layers.1", "other"),
                Layer("{stage}downsample.reduction", "other"),
            ),
            # mmcls 0.25's WindowMSAV2 reads qkv.weight and never calls the module.
            authors_layers=(
                Layer("{stage}blocks.*.attn.w_msa.proj", "attn"),
                Layer("{stage}blocks.*.ffn.layers.0.0", "other"),
                Layer("{stage}blocks.*.ffn.layers.1", "other"),
                Layer("{stage}downsample.reduction", "other"),
            ),
            partial=("backbone.stages.3.*", "head.*"),
            norm_eval=False,  # LayerNorm only
            losa=LoSATaps(("backbone.stages.3.blocks",), "backbone.norm3"),
            notes=("build the backbone as SwinTransformerV2Convertible (qkv called as module)",),
            authors_notes=("authors' variant: attn.w_msa.qkv stays plain (mmcls 0.25 bypassed it)",),
            checkpoint=Checkpoint(
                "swinv2-small-w8_3rdparty_in1k-256px_20220803-b01a4332.pth",
                url=f"{MMPRETRAIN_ZOO}/swin-v2/"
                "swinv2-small-w8_3rdparty_in1k-256px_20220803-b01a4332.pth",
            ),
            description="SwinV2-Small, window 8, 256x256 (Liu et al., CVPR 2022; ViT), "
            "mmpretrain implementation with qkv called as a module (same state dict).",
        ),
        ModelSpec(
            "segformer-mit-b0", "Segformer-mit-b0", "", "seg", True, 512,
            "Segformer", _segformer(mini=False),
            base_classes=150,
            stage=_SEG_STAGE,
            layers=(
                Layer("{stage}attn.q", "attn"),
                Layer("{stage}attn.k", "attn"),
                Layer("{stage}attn.v", "attn"),
                Layer("{stage}attn.proj", "attn"),
                Layer("{stage}ffn.layers.0", "other"),
                Layer("{stage}ffn.layers.4", "other"),
                Layer("decode_head.convs.*.conv", "other"),
                Layer("decode_head.fusion_conv.conv", "other"),
            ),
            # The set that fits Table 3. Kind "attn": LoRA converts the same layers as LoRA-all
            # (the paper's full-training LoRA and LoRA-all rows cost the same, 11976 vs 11971).
            authors_layers=(
                Layer("{stage}ffn.layers.0", "attn"),
                Layer("{stage}ffn.layers.4", "attn"),
                Layer("decode_head.fusion_conv.conv", "attn"),
            ),
            partial=("backbone.layers.3.*", "decode_head.*"),
            head=("decode_head.conv_seg.*",),
            norm_eval=True,  # BatchNorm follows the decode head's LBP 1x1 convs
            notes=(
                "build the backbone as MixVisionTransformerConvertible (explicit q/k/v/proj)",
            ),
            checkpoint=Checkpoint(
                "segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth",
                url=f"{MMSEG_ZOO}/segformer/segformer_mit-b0_512x512_160k_ade20k/"
                "segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth",
            ),
            description="Segformer with a MiT-B0 encoder (Xie et al., NeurIPS 2021), mmseg "
            "implementation with explicit q/k/v/proj attention layers (mmseg checkpoints load "
            "unchanged). ADE20K-pretrained; the 150-class classifier is re-initialised.",
        ),
        ModelSpec(
            "mini-efficientformer", "mini EfficientFormer", "", "cls", False, 28,
            "EfficientFormer", dict(arch=MINI_EFFICIENTFORMER_ARCH, channels=64),
            base_classes=10, in_channels=1,
            stage=_EF_STAGE, layers=_EF_LAYERS, partial=_EF_PARTIAL, losa=_EF_LOSA,
            description="A CPU-sized EfficientFormer (arch "
            "lbp_wht.experiments.presets.MINI_EFFICIENTFORMER_ARCH): a stride-4 stem on 28x28 "
            "inputs gives 7x7 maps, no stage downsamples, 64 channels; the last stage mirrors "
            "L1's, so the same layer types convert. 1 input channel (Fashion-MNIST); random init.",
        ),
        ModelSpec(
            "mini-segformer", "mini Segformer", "", "seg", False, 128,
            "Segformer", _segformer(mini=True),
            base_classes=4, preset="segformer-mit-b0",
            description="A CPU-sized Segformer: MiT with four 1-block stages of 8-64 channels and "
            "the Segformer MLP decoder (32 channels), the module names of MiT-B0 (preset "
            "'segformer-mit-b0'). Plain BN so it also trains distributed on CPU; random init.",
        ),
    )
}  # fmt: skip


def model_spec(model: str | ModelSpec) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``; a ValueError naming the known ids otherwise."""
    if isinstance(model, ModelSpec):
        return model
    try:
        return MODEL_SPECS[model]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODEL_SPECS)}") from None


def preset_models() -> tuple[str, ...]:
    """The models with presets of their own (``get_preset(model=...)``), in table order."""
    return tuple(m.id for m in MODEL_SPECS.values() if m.has_preset)
