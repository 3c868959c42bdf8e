"""LoSA (``lbp_wht.losa``): the side network starts as the frozen model, sends no gradient into
the backbone and keeps none of the backbone's activations for backward.

Pure PyTorch: a small hybrid backbone (NCHW conv blocks with BatchNorm, then token blocks with
a final LayerNorm, like EfficientFormer's last stage) stands in for a real model; the mmengine
build path is tested in ``tests/test_losa_build.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from lbp_wht import freeze, keep_batchnorm_eval
from lbp_wht.losa import LoSA, LowRankMap, LowRankMixer, attach_losa, detach_losa, find_blocks
from lbp_wht.measure import SavedTensorTracker, measure_step

C, HW = 12, 7


class ConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = (
            nn.Conv2d(c, 2 * c, 1),
            nn.BatchNorm2d(2 * c),
            nn.Conv2d(2 * c, c, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.bn(self.fc1(x))))


class Flat(nn.Module):  # parameter-free, like EfficientFormer's: not a tap
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class TokenBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(torch.nn.functional.gelu(self.norm(x)))


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, stride=4, padding=1)  # 28x28 -> 7x7
        self.stage = nn.Sequential(ConvBlock(C), ConvBlock(C), Flat(), TokenBlock(C))
        self.norm = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stage(self.stem(x)))


class Net(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.backbone, self.head = Backbone(), nn.Linear(C, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(1))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _x(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def _attach(net: nn.Module, rank: int = 4, **kw) -> LoSA:
    blocks = find_blocks(net, "backbone.stage")
    return attach_losa(net, blocks, "backbone.norm", rank=rank, example_inputs=_x(1), **kw)


def _perturb(side: LoSA) -> None:
    """Output projections away from zero, so that the side network changes the output."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in side.mixers:
            for layer in (m.channel_up, m.token_up):
                layer.weight.copy_(0.2 * torch.randn(layer.weight.shape, generator=g))


def test_taps_are_the_blocks_with_parameters():
    net = _net()
    assert find_blocks(net, "backbone.stage") == [
        "backbone.stage.0",
        "backbone.stage.1",
        "backbone.stage.3",
    ]
    side = _attach(net)
    assert side.tokens == HW * HW and side.tap_channels == [C, C, C] and side.out_channels == C
    assert isinstance(net.losa, LoSA) and net.losa is side


@pytest.mark.parametrize("train", [False, True])
def test_zero_output_projections_reproduce_the_frozen_model_exactly(train):
    net, x = _net(), _x()
    keep_batchnorm_eval(net)  # norm_eval: running statistics in both modes
    net.train(train)
    with torch.no_grad():
        ref = net(x)
    _attach(net)
    freeze(net, ["losa.*", "head.*"])
    net.train(train)
    out = net(x)
    assert torch.equal(out, ref)  # bit for bit: every correction is exactly zero
    assert out.requires_grad  # ... and yet the side network is in the graph


def test_no_gradient_reaches_the_backbone_even_if_it_is_not_frozen():
    net, x = _net(), _x()
    side = _attach(net)
    _perturb(side)
    keep_batchnorm_eval(net)
    net.train()
    # Nothing frozen: the detached taps alone must keep gradients out of the backbone.
    net(x).square().mean().backward()
    for name, p in net.backbone.named_parameters():
        assert p.grad is None, f"backbone parameter {name} received a gradient"
    grads = {n: p.grad for n, p in net.named_parameters() if not n.startswith("backbone.")}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # with non-zero output projections every side parameter gets a non-zero gradient
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("losa.mixers"))


def test_at_zero_init_only_the_output_projections_and_head_learn():
    net, x = _net(), _x()
    _attach(net)
    freeze(net, ["losa.*", "head.*"])
    keep_batchnorm_eval(net)
    net.train()
    net(x).square().mean().backward()
    nonzero = {
        n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    ups = {n for n in nonzero if ".channel_up." in n or ".token_up." in n}
    assert ups and nonzero - ups == {"head.weight", "head.bias"}  # like LoRA's A with B = 0


def test_backbone_saves_nothing_for_backward_and_does_no_backward_work():
    """Measured with the saved-tensor hooks and the FLOP counter of ``measure_step``."""
    x = _x(8)
    full = _net()
    freeze(full, ["backbone.stage.*", "head.*"])  # partial training, for contrast
    keep_batchnorm_eval(full)
    m_full = measure_step(full.train(), x, elementwise=False)
    assert sum(v for k, v in m_full.saved_by_module.items() if k.startswith("backbone.")) > 0

    net = _net()
    side = _attach(net)
    _perturb(side)
    freeze(net, ["losa.*", "head.*"])
    keep_batchnorm_eval(net)
    m = measure_step(net.train(), x, elementwise=False)
    backbone_saved = {k: v for k, v in m.saved_by_module.items() if k.startswith("backbone")}
    assert backbone_saved == {}
    assert m.module_backprop("backbone") == 0
    assert m.backward_flops == m.module_backprop("losa") + m.module_backprop("head") > 0

    # The whole step saves exactly what the side network and the head save on their own.
    feats = {}
    hooks = [
        dict(net.named_modules())[n].register_forward_hook(
            lambda mod, a, o, n=n: feats.__setitem__(n, o.detach())
        )
        for n in [*side.tap_names, side.output_name]
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    with SavedTensorTracker(net) as alone:
        o = feats[side.output_name] + side([feats[n] for n in side.tap_names])
        net.head(o.mean(1)).sum().backward()
    assert m.saved_activation_bytes == alone.activation_bytes > 0


def test_width_and_layout_changes():
    """Taps of different widths (NCHW maps, tokens) and an output of another width: the side
    state changes width through bias-free maps and the start stays exact."""

    class Hetero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b1, self.b2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 16, 1)
            self.out = nn.Conv2d(16, 32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.b2(self.b1(x))).mean((2, 3))

    torch.manual_seed(0)
    net, x = Hetero(), torch.randn(2, 3, 5, 5)
    ref = net(x)
    side = attach_losa(net, ["b1", "b2"], "out", rank=3, example_inputs=x[:1])
    assert side.tap_channels == [8, 16] and side.out_channels == 32 and side.tokens == 25
    for trans, (a, b) in ((side.transitions[1], (8, 16)), (side.out_transition, (16, 32))):
        assert isinstance(trans, LowRankMap)  # bias-free, rank 3: a -> 3 -> b
        assert [tuple(m.weight.shape) for m in trans] == [(3, a), (b, 3)]
        assert all(m.bias is None for m in trans)
    assert torch.equal(net(x), ref)
    _perturb(side)
    assert not torch.allclose(net(x), ref)


def test_detach_and_deepcopy():
    net, x = _net(), _x()
    net.eval()
    with torch.no_grad():
        ref = net(x)
    side = _attach(net)
    copied = copy.deepcopy(net)
    _perturb(copied.losa)  # the copy's hooks feed the copy's side network
    with torch.no_grad():
        assert torch.equal(net(x), ref)
        assert not torch.allclose(copied(x), ref)
    _perturb(side)
    back = detach_losa(net)
    assert back is side and not hasattr(net, "losa")
    assert all(not m._forward_hooks for m in net.modules())
    with torch.no_grad():
        assert torch.equal(net(x), ref)
    assert "losa.mixers.0.token_up.weight" in copied.state_dict()


def test_mixer_shapes_and_errors():
    mixer = LowRankMixer(tokens=49, channels=12, rank=4)
    assert mixer(torch.randn(2, 49, 12)).shape == (2, 49, 12)
    with pytest.raises(ValueError, match="built for"):
        mixer(torch.randn(2, 36, 12))
    with pytest.raises(ValueError, match="rank"):
        LowRankMixer(49, 12, 0)

    net = _net()
    with pytest.raises(ValueError, match="no module"):
        attach_losa(net, ["backbone.nope"], example_inputs=_x(1))
    with pytest.raises(ValueError, match="rank"):
        _attach(net, rank=0)
    strided = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, stride=2))  # 64, 9 tokens
    with pytest.raises(ValueError, match="token count"):
        attach_losa(strided, ["0", "1"], example_inputs=torch.zeros(1, 3, 8, 8))
    _attach(net)
    with pytest.raises(ValueError, match="already has"):
        _attach(net)
    with pytest.raises(ValueError, match="another size"):
        net(torch.zeros(1, 3, 56, 56))
    with pytest.raises(ValueError, match="no LoSA"):
        detach_losa(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no child block"):
        find_blocks(net, "backbone.stage.2")
