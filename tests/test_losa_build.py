"""``lbp.method='losa'`` through the mmengine build path (``LBPWHTModel``), on the CPU demo's
mini EfficientFormer: the side network is attached at build time, before the optimizer; the
optimizer gets exactly it and the head; the built model starts as the frozen one; no gradient
reaches the backbone; checkpoints of the plain model load; bad settings are refused."""

from __future__ import annotations

import pytest
import torch

import lbp_wht.integrations  # noqa: F401  (CPU shims first)

pytest.importorskip("mmpretrain")

from lbp_wht.integrations.build import (  # noqa: E402
    LBPConfigError,
    TrainableOnlyOptimWrapperConstructor,
    validate_lbp_cfg,
)
from lbp_wht.integrations.cost_record import analyze, build_model, load_config  # noqa: E402
from lbp_wht.integrations.runner import compare_state_dicts  # noqa: E402
from lbp_wht.losa import LoSA  # noqa: E402
from lbp_wht.reporting.paths import CONFIGS  # noqa: E402

TARGET = CONFIGS / "mini" / "demo" / "target.py"


def _built(method: str, seed: int = 0):
    import lbp_wht.integrations.models  # noqa: F401
    import lbp_wht.integrations.runner  # noqa: F401

    torch.manual_seed(seed)
    return build_model(load_config(TARGET, {"lbp.method": method}))


def _x() -> torch.Tensor:
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_built_losa_model_trains_exactly_the_side_network_and_head():
    net = _built("losa")
    assert isinstance(net.losa, LoSA)
    assert net.losa.tap_names == ["backbone.network.3.0", "backbone.network.3.2"]
    assert net.losa.output_name == "backbone.norm3" and net.losa.rank == 8
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith(("losa.", "head."))}
    assert set(net.lbp_info["trainable"]) == trainable
    # The optimizer is built after the model: it holds exactly those parameters.
    ctor = TrainableOnlyOptimWrapperConstructor(dict(optimizer=dict(type="AdamW", lr=1e-3)))
    opt = ctor(net).optimizer
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in net.named_parameters() if n in trainable}


def test_built_losa_model_starts_as_the_frozen_model_and_never_backprops_into_it():
    full, net = _built("full_bp"), _built("losa")  # same seed: same backbone and head
    x = _x()
    for train in (False, True):  # norm_eval keeps BatchNorm on running statistics in both
        full.train(train), net.train(train)
        with torch.no_grad():
            ref = full(x, mode="tensor")
        out = net(x, mode="tensor")
        assert torch.equal(out, ref)
    out.float().square().mean().backward()
    for name, p in net.named_parameters():
        assert (p.grad is not None) == name.startswith(("losa.", "head.")), name


def test_plain_checkpoints_load_and_losa_keys_count_as_adapters():
    full, net = _built("full_bp"), _built("losa")
    diff = compare_state_dicts(net.state_dict(), full.state_dict())
    assert diff["missing"] == [] and diff["unexpected"] == [] and diff["mismatched"] == []
    assert diff["adapters"] and all(k.startswith("losa.") for k in diff["adapters"])
    assert len(diff["adapters"]) == len([k for k in net.state_dict() if k.startswith("losa.")])


def test_cost_record_counts_the_side_network_only():
    rec = analyze(load_config(TARGET, {"lbp.method": "losa"}), batch=2, elementwise=False)
    full = analyze(load_config(TARGET, {"lbp.method": "full_bp"}), batch=2, elementwise=False)
    assert 0 < rec["backprop_flops"] < 0.05 * full["backprop_flops"]
    assert rec["saved_activation_bytes"] < 0.2 * full["saved_activation_bytes"]
    layers = {row["name"] for row in rec["layers"]}
    assert layers and all(n.startswith(("losa.", "head.")) for n in layers)


def test_bad_losa_settings_are_refused():
    base = dict(method="losa", model="mini-efficientformer")
    assert validate_lbp_cfg(base)["losa_rank"] == 8
    with pytest.raises(LBPConfigError, match="scope='partial'"):
        validate_lbp_cfg({**base, "scope": "full"})
    with pytest.raises(LBPConfigError, match="losa_rank"):
        validate_lbp_cfg({**base, "losa_rank": 0})
    with pytest.raises(LBPConfigError, match="losa_rank"):
        validate_lbp_cfg({**base, "losa_rank": "8"})
    from lbp_wht.experiments.presets import get_preset

    with pytest.raises(ValueError, match="segmentation"):
        get_preset("segformer-mit-b0", "losa", "partial")
