"""The model registry (lbp_wht/experiments/models.py): one entry per model, consistent with the
models the presets build, the old tables derived from it unchanged, adding a model is one
entry, and no harness module outside the registry tests model ids as strings."""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from id_scan import id_tests

from lbp_wht.experiments import configs, presets, pretrained
from lbp_wht.experiments import models as registry
from lbp_wht.experiments import vocab as v
from lbp_wht.experiments.models import (
    MODEL_SPECS,
    Layer,
    LoSATaps,
    ModelSpec,
    model_spec,
    preset_models,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the registry
def test_registry_is_the_vocabulary():
    assert v.MODEL_SPECS is MODEL_SPECS and v.ModelSpec is ModelSpec
    assert v.MODEL_ORDER == tuple(MODEL_SPECS)
    assert preset_models() == tuple(m for m, s in MODEL_SPECS.items() if s.has_preset)
    assert v.PAPER_MODELS == tuple(m for m, s in MODEL_SPECS.items() if s.paper)
    assert v.model_spec("swinv2-small-w8") is MODEL_SPECS["swinv2-small-w8"]
    assert set(registry.ARCHS) == set(presets._BUILDERS)
    for spec in MODEL_SPECS.values():
        assert model_spec(spec.preset).has_preset, spec.id


def test_unknown_model_is_one_clear_error():
    for call in (
        lambda: model_spec("vit-b"),
        lambda: v.model_spec("vit-b"),
        lambda: presets.model_config("vit-b"),
    ):
        with pytest.raises(ValueError, match=r"unknown model 'vit-b'; choose one of \["):
            call()
    # A model without presets of its own names the ones that have them.
    with pytest.raises(ValueError, match=r"unknown model 'mini-segformer'; choose one of \["):
        presets.get_preset("mini-segformer", "full_bp", "partial")


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(task="det"), "task"),
        (dict(arch="ResNet"), "arch"),
        (dict(layers=()), "layer table"),
        (dict(preset="efficientformer-l1"), "layer table"),
        (dict(partial=()), "partial"),
        (dict(layers=(Layer("{stage}fc", "mlp"),)), "kind"),
        (dict(layers=(Layer("{stage}fc", "other", scopes=("half",)),)), "scopes"),
    ],
)
def test_spec_refuses_inconsistent_fields(bad, match):
    fields = dict(
        id="toy", name="Toy", family="", task="cls", paper=False, img_size=28,
        arch="EfficientFormer", stage=("a.3.", "a.*."), layers=(Layer("{stage}fc", "other"),),
        partial=("a.3.*", "head.*"),
    )  # fmt: skip
    with pytest.raises(ValueError, match=match):
        ModelSpec(**{**fields, **bad})


def test_a_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODEL_SPECS["efficientformer-l1"].img_size = 256  # type: ignore[misc]


# ------------------------------------------- the old tables, written once, equal the specs
#: The values of the per-model tables before the move into the registry (commit a5c3497),
#: typed in once: the specs must hold them.
OLD_MODELS = [  # vocab.MODELS: id, name, family, task, paper, preset, img_size
    ("efficientformer-l1", "EfficientFormer-L1", "Hybrid", "cls", True, "efficientformer-l1", 224),
    ("efficientformer-l7", "EfficientFormer-L7", "Hybrid", "cls", True, "efficientformer-l7", 224),
    ("efficientformerv2-s0", "EfficientFormerV2-S0", "Hybrid", "cls", True,
     "efficientformerv2-s0", 224),
    ("efficientformerv2-l", "EfficientFormerV2-L", "Hybrid", "cls", True, "efficientformerv2-l",
     224),
    ("swinv2-small-w8", "SwinV2-Small", "ViT", "cls", True, "swinv2-small-w8", 256),
    ("segformer-mit-b0", "Segformer-mit-b0", "", "seg", True, "segformer-mit-b0", 512),
    ("mini-efficientformer", "mini EfficientFormer", "", "cls", False, "mini-efficientformer", 28),
    ("mini-segformer", "mini Segformer", "", "seg", False, "segformer-mit-b0", 128),
]  # fmt: skip
OLD_DEFAULT_SIZE = {  # integrations.cost_record.DEFAULT_SIZE (preset models' img_size)
    "efficientformer-l1": 224, "efficientformer-l7": 224, "efficientformerv2-s0": 224,
    "efficientformerv2-l": 224, "swinv2-small-w8": 256, "segformer-mit-b0": 512,
    "mini-efficientformer": 28,
}  # fmt: skip
OLD_TABLE8_SHAPES = {  # benchmark.latency.TABLE8_SHAPES
    "efficientformer-l1": [(448, 1792, 49), (1792, 448, 49)],
    "efficientformer-l7": [(768, 3072, 49), (3072, 768, 49)],
}
OLD_CLS_MODELS = (  # experiments.configs.CLS_MODELS (paper classification models)
    "efficientformer-l1", "efficientformer-l7", "efficientformerv2-s0", "efficientformerv2-l",
    "swinv2-small-w8",
)  # fmt: skip
_T2 = "configs/table2/{m}/{m}_partial_full-bp_cifar10.py"
OLD_PRETRAINED = {  # experiments.pretrained.PRETRAINED: file, source, verify config
    "efficientformer-l1": (
        "efficientformer-l1_3rdparty_in1k_20220915-cc3e1ac6.pth",
        "https://download.openmmlab.com/mmclassification/v0/efficientformer/"
        "efficientformer-l1_3rdparty_in1k_20220915-cc3e1ac6.pth",
        _T2,
    ),
    "efficientformer-l7": (
        "efficientformer-l7_3rdparty_in1k_20220915-185e30af.pth",
        "https://download.openmmlab.com/mmclassification/v0/efficientformer/"
        "efficientformer-l7_3rdparty_in1k_20220915-185e30af.pth",
        _T2,
    ),
    "efficientformerv2-s0": (
        "efficientformerv2_s0_timm_in1k.pth", "timm efficientformerv2_s0.snap_dist_in1k", _T2
    ),
    "efficientformerv2-l": (
        "efficientformerv2_l_timm_in1k.pth", "timm efficientformerv2_l.snap_dist_in1k", _T2
    ),
    "swinv2-small-w8": (
        "swinv2-small-w8_3rdparty_in1k-256px_20220803-b01a4332.pth",
        "https://download.openmmlab.com/mmclassification/v0/swin-v2/"
        "swinv2-small-w8_3rdparty_in1k-256px_20220803-b01a4332.pth",
        _T2,
    ),
    "segformer-mit-b0": (
        "segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth",
        "https://download.openmmlab.com/mmsegmentation/v0.5/segformer/"
        "segformer_mit-b0_512x512_160k_ade20k/"
        "segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth",
        "configs/table3/{m}_partial_full-bp_cityscapes.py",
    ),
}  # fmt: skip
_EF = (["backbone.network.3.*", "head.*"], ["head.*"], True)
_V2 = (["backbone.timm_model.stages.3.blocks.*", "head.*"], ["head.*"], True)
OLD_SCOPE = {  # presets._MODELS without the layer functions: partial, head, norm_eval
    "efficientformer-l1": _EF, "efficientformer-l7": _EF, "mini-efficientformer": _EF,
    "efficientformerv2-s0": _V2, "efficientformerv2-l": _V2,
    "swinv2-small-w8": (["backbone.stages.3.*", "head.*"], ["head.*"], False),
    "segformer-mit-b0": (["backbone.layers.3.*", "decode_head.*"], ["decode_head.conv_seg.*"],
                         True),
}  # fmt: skip
_EF_LOSA = (("backbone.network.3",), "backbone.norm3")
_V2_LOSA = (("backbone.timm_model.stages.3.blocks",), "backbone.timm_model.norm")
OLD_LOSA = {  # presets._LOSA
    "efficientformer-l1": _EF_LOSA, "efficientformer-l7": _EF_LOSA,
    "mini-efficientformer": _EF_LOSA, "efficientformerv2-s0": _V2_LOSA,
    "efficientformerv2-l": _V2_LOSA,
    "swinv2-small-w8": (("backbone.stages.3.blocks",), "backbone.norm3"),
}  # fmt: skip


def _old_layers(model: str, scope: str, variant: str) -> list[tuple[str, str, int, str]]:
    """The old layer-table functions of presets.py (``_efficientformer_layers``, ...,
    ``_authors_layers``, ``_declared``), as they were: ``(glob, kind, fused, layout)``."""
    full = scope == "full"
    if model.startswith("efficientformerv2"):
        t = "backbone.timm_model.stages."
        b = t + ("*.blocks.*." if full else "3.blocks.*.")
        rows = [(b + f"token_mixer.{n}.conv", "attn", 1) for n in ("q", "k", "v", "proj")]
        rows += [(b + f"token_mixer.talking_head{i}", "attn", 1) for i in (1, 2)]
        rows += [(b + "mlp.fc1.conv", "other", 1), (b + "mlp.fc2.conv", "other", 1)]
        if full:
            d = t + "*.downsample.attn."
            rows += [(d + n, "attn", 1) for n in ("q.proj.conv", "k.conv", "v.conv", "proj.conv")]
    elif "efficientformer" in model:
        p = "backbone.network.*.*." if full else "backbone.network.3.*."
        rows = [(p + "token_mixer.qkv", "attn", 3), (p + "token_mixer.proj", "attn", 1)]
        rows += [(p + "mlp.fc1", "other", 1), (p + "mlp.fc2", "other", 1)]
    elif model == "swinv2-small-w8":
        p = "backbone.stages.*." if full else "backbone.stages.3."
        rows = [
            (p + "blocks.*.attn.w_msa.qkv", "attn", 3), (p + "blocks.*.attn.w_msa.proj", "attn", 1),
            (p + "blocks.*.ffn.layers.0.0", "other", 1), (p + "blocks.*.ffn.layers.1", "other", 1),
            (p + "downsample.reduction", "other", 1),
        ]  # fmt: skip
        if variant == "authors":
            rows = [r for r in rows if not r[0].endswith(".attn.w_msa.qkv")]
    else:  # segformer-mit-b0
        p = "backbone.layers.*.1.*." if full else "backbone.layers.3.1.*."
        rows = [(p + f"attn.{n}", "attn", 1) for n in ("q", "k", "v", "proj")]
        rows += [(p + "ffn.layers.0", "other", 1), (p + "ffn.layers.4", "other", 1)]
        rows += [("decode_head.convs.*.conv", "other", 1)]
        rows += [("decode_head.fusion_conv.conv", "other", 1)]
        if variant == "authors":
            rows = [(p + "ffn.layers.0", "attn", 1), (p + "ffn.layers.4", "attn", 1)]
            rows += [("decode_head.fusion_conv.conv", "attn", 1)]
    talking = ("token_mixer.talking_head1", "token_mixer.talking_head2")
    return [(g, k, f, "nchw" if g.endswith(talking) else "") for g, k, f in rows]


#: sha256 of ``json.dumps`` of every model's ``model_config(m, 10, training=..., in_channels=...)``
#: (training False / True, in_channels None / 1) before the move (the training form is also
#: checked by ``tools/gen_configs.py --check``: the generated model bases did not change).
OLD_MODEL_CONFIGS_SHA256 = "b60504c38c2a7ba442ffb7172d2c24aa10aecdfee87346368154f0a641f6d604"


def test_the_specs_hold_the_old_tables():
    from lbp_wht.benchmark.latency import TABLE8_SHAPES
    from lbp_wht.integrations.cost_record import input_size

    specs = MODEL_SPECS.values()
    assert [
        (m.id, m.name, m.family, m.task, m.paper, m.preset, m.img_size) for m in specs
    ] == OLD_MODELS
    assert preset_models() == tuple(m for m, *_ in OLD_MODELS if m != "mini-segformer")
    sizes = {m: input_size({"lbp": {"model": m}})[0] for m in preset_models()}
    assert {m.id: m.img_size for m in specs if m.has_preset} == sizes == OLD_DEFAULT_SIZE
    assert TABLE8_SHAPES == OLD_TABLE8_SHAPES
    assert {m.id: list(m.latency_shapes) for m in specs if m.latency_shapes} == OLD_TABLE8_SHAPES
    assert tuple(m.id for m in specs if m.paper and m.task == "cls") == OLD_CLS_MODELS
    assert all(m.description for m in specs)  # configs.MODEL_NOTES had every model
    got = {
        m.id: (
            m.checkpoint.file,
            m.checkpoint.source,
            pretrained.verify_config(m.id).replace(m.id, "{m}"),
        )
        for m in specs
        if m.checkpoint is not None
    }
    assert got == OLD_PRETRAINED
    assert pretrained.checkpoint("segformer-mit-b0") is MODEL_SPECS["segformer-mit-b0"].checkpoint
    with pytest.raises(KeyError):
        pretrained.checkpoint("mini-efficientformer")
    for model in preset_models():
        spec = model_spec(model)
        assert (list(spec.partial), list(spec.head), spec.norm_eval) == OLD_SCOPE[model]
        assert (tuple(spec.losa) if spec.losa else None) == OLD_LOSA.get(model)
        for scope in v.SCOPES:
            for variant in presets.VARIANTS:
                rows = [tuple(r[:3]) + (r.layout,) for r in spec.layer_table(scope, variant)]
                assert rows == _old_layers(model, scope, variant), (model, scope, variant)
    blob = {
        f"cfg/{m}/{training}/{ic}": json.dumps(
            presets.model_config(m, 10, training=training, in_channels=ic), default=repr
        )
        for m in MODEL_SPECS
        for training in (False, True)
        for ic in (None, 1)
    }
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
    assert digest == OLD_MODEL_CONFIGS_SHA256


def test_presets_read_the_spec():
    """What a preset holds per model comes from the model's entry."""
    for model in preset_models():
        spec = model_spec(model)
        full = presets.get_preset(model, "full_bp", "partial")
        assert full.trainable == list(spec.partial) and full.norm_eval == spec.norm_eval
        assert full.notes == spec.notes
        head = presets.get_preset(model, "head_only", "full")
        assert head.trainable == list(spec.head)
        lbp = presets.get_preset(model, "lbp_wht", "full", variant="authors")
        assert [r["target"] for r in lbp.rules] == [
            r.glob for r in spec.layer_table("full", "authors")
        ]
        assert lbp.notes == spec.notes + spec.authors_notes
        if spec.losa is not None:
            losa = presets.get_preset(model, "losa", "partial")
            assert (losa.losa_containers, losa.losa_output) == tuple(spec.losa)
        else:
            with pytest.raises(ValueError, match="LoSA presets"):
                presets.get_preset(model, "losa", "partial")


# ---------------------------------------------------- each spec against the model it builds
def _build(model: str, cfg: dict | None = None, meta: bool = True):
    """The model of ``model_config(model)`` (random init), on the meta device where the
    architecture builds there (no memory, no init; ``meta=True``), else on the CPU."""
    import torch
    from mmengine.registry import DefaultScope

    import lbp_wht.integrations.models  # noqa: F401  (registers the project's model types)

    spec = model_spec(model)
    if spec.task == "seg":
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    cfg = cfg or presets.model_config(model, num_classes=10)
    with DefaultScope.overwrite_default_scope("mmseg" if spec.task == "seg" else "mmpretrain"):
        if meta:
            try:
                with torch.device("meta"):
                    return MODELS.build(copy.deepcopy(cfg))
            except RuntimeError:  # e.g. Tensor.item() on a drop-path schedule
                pass
        torch.manual_seed(0)
        return MODELS.build(cfg)


def _check_spec_against(spec: ModelSpec, net) -> None:
    """Every glob of the spec's presets names modules / parameters of ``net``."""
    preset = model_spec(spec.preset)  # a stand-in uses its preset model's globs
    modules = [n for n, _ in net.named_modules() if n]
    params = [n for n, _ in net.named_parameters()]
    for scope in v.SCOPES:
        for variant in presets.VARIANTS:
            for layer in preset.layer_table(scope, variant):
                assert any(fnmatchcase(n, layer.glob) for n in modules), (spec.id, layer)
    # the partial table is part of the full one
    assert {n for n in modules for r in preset.layer_table("partial") if fnmatchcase(n, r.glob)} < {
        n for n in modules for r in preset.layer_table("full") if fnmatchcase(n, r.glob)
    }
    partial = {n for n in params if any(fnmatchcase(n, g) for g in preset.partial)}
    head = {n for n in params if any(fnmatchcase(n, g) for g in preset.head)}
    assert head and head <= partial < set(params), spec.id
    if preset.losa is not None:
        names = set(modules)
        assert set(preset.losa.containers) | {preset.losa.output} <= names, spec.id


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_spec_matches_the_model_it_builds(model):
    pytest.importorskip("mmpretrain")
    pytest.importorskip("mmseg")
    pytest.importorskip("timm")
    _check_spec_against(model_spec(model), _build(model))


def test_latency_shapes_are_the_models_layers():
    """Table 8's shapes are the MLP of the last Meta3D block: (C, 4C, 49) and (4C, C, 49)."""
    pytest.importorskip("mmpretrain")
    for model in MODEL_SPECS:
        spec = model_spec(model)
        if not spec.latency_shapes:
            continue
        net = _build(model)
        mods = dict(net.named_modules())
        fc1s = [n for n in mods if fnmatchcase(n, "backbone.network.3.*.mlp.fc1")]
        last = max(fc1s, key=lambda n: int(n.split(".")[3]))
        fc1, fc2 = mods[last], mods[last.replace("fc1", "fc2")]
        assert [s[:2] for s in spec.latency_shapes] == [
            (fc1.in_features, fc1.out_features),
            (fc2.in_features, fc2.out_features),
        ]


# -------------------------------------------------------------- adding a model: one entry
TINY = ModelSpec(
    "tiny-efficientformer", "tiny EfficientFormer", "", "cls", False, 28, "EfficientFormer",
    dict(
        arch=dict(layers=[1, 1, 1, 2], embed_dims=[48] * 4, downsamples=[False] * 4, vit_num=1),
        channels=48,
    ),
    base_classes=5, in_channels=1,
    stage=("backbone.network.3.*.", "backbone.network.*.*."),
    layers=(
        Layer("{stage}token_mixer.qkv", "attn", 3),
        Layer("{stage}mlp.fc1", "other"),
        Layer("{stage}mlp.fc2", "other"),
    ),
    partial=("backbone.network.3.*", "head.*"),
    losa=LoSATaps(("backbone.network.3",), "backbone.norm3"),
    notes=("a toy model of this test",),
    description="A toy EfficientFormer registered by tests/test_models.py.",
    latency_shapes=((48, 192, 49), (192, 48, 49)),
)  # fmt: skip


def test_adding_a_model_is_one_entry(monkeypatch):
    """Register a toy model in the registry only: the vocabulary, the presets, the model
    definition, the generated model base, the cost record's defaults and the config checks
    pick it up without other edits."""
    from lbp_wht.config import LoRAConfig
    from lbp_wht.integrations.build import check_lbp_preset
    from lbp_wht.integrations.cost_record import input_size

    monkeypatch.setitem(MODEL_SPECS, TINY.id, TINY)
    assert v.model_spec(TINY.id) is TINY and v.short_model_name(TINY.id) == "tiny EfficientFormer"
    assert TINY.id in preset_models()
    check_lbp_preset({"model": TINY.id})  # an lbp block naming it is accepted

    lora = presets.get_preset(TINY.id, "lora", "partial")
    assert [r["target"] for r in lora.rules] == ["backbone.network.3.*.token_mixer.qkv"]
    assert lora.rules[0]["lora"].rank == 3 * LoRAConfig().rank  # a fused qkv layer
    lbp = presets.get_preset(TINY.id, "lbp_wht", "full")
    assert len(lbp.rules) == 3 and lbp.trainable == ["*"] and lbp.notes == TINY.notes
    losa = presets.get_preset(TINY.id, "losa", "partial")
    assert losa.losa_containers == ("backbone.network.3",)

    cfg = presets.model_config(TINY.id, 5, in_channels=1)
    assert cfg["backbone"]["arch"]["embed_dims"] == [48] * 4 and cfg["head"]["in_channels"] == 48
    base = configs.model_base(TINY.id)
    assert base.path == "_base_/models/tiny-efficientformer.py"
    assert "A toy EfficientFormer" in base.text and "num_classes=5" in base.text
    assert "in_channels=1" in base.text and "load_from = None" in base.text
    assert input_size({"lbp": {"model": TINY.id}}) == (28, 28)

    pytest.importorskip("mmpretrain")
    import torch

    from lbp_wht import convert, freeze, keep_batchnorm_eval

    _check_spec_against(TINY, _build(TINY.id))
    net = _build(TINY.id, presets.model_config(TINY.id, 5, in_channels=1), meta=False)
    x = torch.randn(2, 1, 28, 28)
    report = convert(net, lbp.rules, example_input=x)
    assert len(report.names()) == 4 * 2 + 3  # fc1 / fc2 of 4 Meta4D blocks + qkv, fc1, fc2
    freeze(net, lbp.trainable)
    keep_batchnorm_eval(net)  # the preset's norm_eval
    net.train()
    net(x, mode="tensor").sum().backward()


# ---------------------------------------------- no model-id string tests outside the registry
#: Where the harness lives (the registry module itself is exempt).
HARNESS = [
    "lbp_wht/experiments",
    "lbp_wht/integrations",
    "lbp_wht/runs",
    "lbp_wht/reporting",
    "lbp_wht/benchmark",
    "tools",
    "scripts",
    "analysis",
]
REGISTRY = "lbp_wht/experiments/models.py"
#: Comparisons that name a model id on purpose, by (file, first line of the test), with why
#: (none today).
MODEL_ID_TESTS_ALLOWED: dict[tuple[str, str], str] = {}
#: Literals that list several model ids on purpose, by (file, first line of the literal), with
#: why: they are choices of an analysis, not facts about a model.
MODEL_ID_LISTS_ALLOWED: dict[tuple[str, str], str] = {
    (
        "analysis/cost_agreement.py",
        '("efficientformer-l1", "efficientformer-l7", "efficientformerv2-l",',
    ): "the models the cost README's LoRA-all / Full BP sentence quotes, in its order",
}


def model_id_tests(source: str, ids: tuple[str, ...]) -> list[tuple[int, str]]:
    """:func:`id_tests` for model ids (parts of at least 4 characters)."""
    return id_tests(source, ids, min_part=4)


def model_id_lists(source: str, ids: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, text)`` of every tuple / list / set literal or dict with two or more model ids
    among its elements or keys: a per-model table outside the registry."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            elts = node.elts
        elif isinstance(node, ast.Dict):
            elts = [k for k in node.keys if k is not None]
        else:
            continue
        if sum(isinstance(e, ast.Constant) and e.value in ids for e in elts) >= 2:
            found.append((node.lineno, ast.get_source_segment(source, node) or ""))
    return found


def test_the_scanners_find_the_old_spellings():
    ids = tuple(MODEL_SPECS)
    old = """
if model.startswith("efficientformerv2"): pass
if "segformer" in model: pass
if model == "swinv2-small-w8": pass
if model in ("efficientformer-l1", "efficientformer-l7"): pass
ncls = 150 if model == "segformer-mit-b0" else 1000
match model:
    case "mini-segformer": pass
"""
    assert [line for line, _ in model_id_tests(old, ids)] == [2, 3, 4, 5, 6, 8]
    fine = """
if spec.arch == "EfficientFormerV2" and spec.task == "seg" and folder == "mini": pass
model = "efficientformer-l1"
run(model="mini-efficientformer", size=28)
"""
    assert model_id_tests(fine, ids) == []
    tables = """
SIZE = {"efficientformer-l1": 224, "swinv2-small-w8": 256}
CLS = ("efficientformer-l1", "efficientformer-l7")
one = ["segformer-mit-b0"]
"""
    assert [line for line, _ in model_id_lists(tables, ids)] == [2, 3]


def _harness_files():
    for folder in HARNESS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != REGISTRY:
                yield rel, path.read_text()


def test_no_harness_module_tests_model_ids_as_strings():
    ids = tuple(MODEL_SPECS)
    bad = [
        f"{rel}:{line}: {text.splitlines()[0]}"
        for rel, source in _harness_files()
        for line, text in model_id_tests(source, ids)
        if (rel, text.splitlines()[0]) not in MODEL_ID_TESTS_ALLOWED
    ]
    assert not bad, (
        "model ids tested as strings outside lbp_wht/experiments/models.py; read the "
        "ModelSpec's fields instead (model_spec(m).task, .arch, .layer_table(scope), ...):\n"
        + "\n".join(bad)
    )


def test_no_harness_module_keeps_a_per_model_table():
    ids = tuple(MODEL_SPECS)
    bad = [
        f"{rel}:{line}: {text.splitlines()[0]}"
        for rel, source in _harness_files()
        for line, text in model_id_lists(source, ids)
        if (rel, text.splitlines()[0]) not in MODEL_ID_LISTS_ALLOWED
    ]
    assert not bad, (
        "a literal lists several model ids outside lbp_wht/experiments/models.py; put the "
        "fact into each model's ModelSpec and derive the table from MODEL_SPECS:\n" + "\n".join(bad)
    )
