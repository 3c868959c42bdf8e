"""The core on an accelerator: the gradient tests of ``test_core`` / ``test_fast_path`` /
``test_layers`` in float32 on CUDA, low precision and autocast against float32 references, the
saved memory measured by the CUDA allocator, ``torch.compile`` of a converted model, one
LBP + LoRA layer.

Every test takes a ``device``: ``cpu`` always runs (the same assertions, so none of this is
dead code on a machine without a GPU) and ``cuda`` carries the ``cuda`` marker and is skipped,
with the reason, where ``torch.cuda.is_available()`` is False. ``pytest -m cuda`` runs only the
CUDA cases (``scripts/gpu_check.sh`` does).

Tolerances: the references are float64 on the CPU (``tests/reference.py`` and autograd through
the plain layer); float32 results on either device agree to ``rtol=atol=2e-4`` (TF32 is off
for these tests, see ``_no_tf32``); bfloat16 / float16 to a few percent of the gradient's scale.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from devices import DEVICES, HAS_CUDA, NO_CUDA
from reference import lbp_backward_reference

from lbp_wht import (
    LBPConfig,
    LBPConv2d,
    LBPLinear,
    LBPLoRALinear,
    LoRAConfig,
    MapGeometry,
    WHTProjector,
    convert,
    lbp_forward,
    select_bases,
)

F32 = dict(rtol=2e-4, atol=2e-4)


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 matmuls in full float32: TF32 (10-bit mantissa) would fail float32 tolerances
    on Ampere and later for reasons that have nothing to do with LBP-WHT."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _grads(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """``(g_x, g_w, g_b)`` of ``layer`` for input ``x`` and output gradient ``g``."""
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad()
    layer(x).backward(g)
    out = [x.grad, layer.weight.grad]
    if layer.bias is not None:
        out.append(layer.bias.grad)
    return [t.detach().clone() for t in out]


def _assert_close_to(got: list[torch.Tensor], want: list, **tol) -> None:
    for i, (a, e) in enumerate(zip(got, want)):
        e = torch.as_tensor(e, dtype=torch.float64)
        torch.testing.assert_close(a.double().cpu(), e, msg=lambda m, i=i: f"grad {i}: {m}", **tol)


def _rel_err(a: torch.Tensor, e: torch.Tensor) -> float:
    a, e = a.double().cpu(), e.double().cpu()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


# ---- exactness and the paper's equations, float32 on the device ------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hw,extra", [((7, 7), 0), ((9, 13), 0), ((7, 7), 1)])
def test_full_basis_zero_padding_is_exact_backprop(device, hw, extra):
    """All 64 bases with zero padding reproduce plain backprop (linear, prefix tokens)."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    lbp = LBPLinear.from_module(
        copy.deepcopy(lin),
        LBPConfig(radius=15, padding="zero"),
        geometry=MapGeometry(prefix_tokens=extra, hw=hw),
    ).to(device)
    L = extra + hw[0] * hw[1]
    x, g = torch.randn(3, L, 6, dtype=torch.float64), torch.randn(3, L, 5, dtype=torch.float64)
    want = _grads(lin.double(), x, g)
    _assert_close_to(_grads(lbp, x.float().to(device), g.float().to(device)), want, **F32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["dense", "patch"])
@pytest.mark.parametrize("select,r,hw", [("lp_l1", 2, (7, 7)), ("lp_l1", 4, (14, 14)),
                                         ("lp_l1", 6, (12, 10)), ("lp_linf", 3, (7, 7))])  # fmt: skip
def test_linear_matches_algorithm1_reference(device, impl, select, r, hw):
    """Dense and patch projector paths on the device against the NumPy Algorithm 1."""
    torch.manual_seed(1)
    lin = nn.Linear(5, 7)
    lbp = LBPLinear.from_module(
        lin, LBPConfig(selection=select, radius=r, impl=impl), geometry=MapGeometry(hw=hw)
    ).to(device)
    L = hw[0] * hw[1]
    x, g = torch.randn(2, L, 5), torch.randn(2, L, 7)
    ref = lbp_backward_reference(
        x.double().numpy(),
        lin.weight.detach().double().numpy(),
        g.double().numpy(),
        hw,
        select_bases(select, radius=r),
    )
    got = _grads(lbp, x.to(device), g.to(device))
    _assert_close_to(got, [ref["g_x"], ref["g_w"], g.double().sum((0, 1))], **F32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hw", [(7, 7), (12, 10)])
def test_conv1x1_matches_algorithm1_reference(device, channels_last, hw):
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 3, 1)
    lbp = LBPConv2d.from_module(conv, LBPConfig(radius=4)).to(device)
    x, g = torch.randn(2, 5, *hw), torch.randn(2, 3, *hw)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xd, gd = (t.to(device).contiguous(memory_format=fmt) for t in (x, g))
    gx, gw, gb = _grads(lbp, xd, gd)
    assert gx.shape == x.shape
    tok = lambda t: t.double().cpu().flatten(2).transpose(1, 2).numpy()  # noqa: E731
    ref = lbp_backward_reference(
        tok(x), conv.weight.detach()[:, :, 0, 0].double().numpy(), tok(g), hw, select_bases("lp_l1", radius=4)
    )  # fmt: skip
    np.testing.assert_allclose(tok(gx), ref["g_x"], **F32)
    np.testing.assert_allclose(gw[:, :, 0, 0].double().cpu().numpy(), ref["g_w"], **F32)
    torch.testing.assert_close(gb.double().cpu(), g.double().sum((0, 2, 3)), **F32)


@pytest.mark.parametrize("device", DEVICES)
def test_projector_dense_and_patch_agree_and_roundtrip(device):
    """Both projector paths give the same coefficients on the device; with every basis and
    zero padding, ``project_back(project(x, grad=True)) == x``."""
    torch.manual_seed(3)
    bases = select_bases("lp_l1", radius=6)
    x = torch.randn(2, 14 * 10, 8, device=device)
    dense = WHTProjector((14, 10), bases, impl="dense")
    patch = WHTProjector((14, 10), bases, impl="patch")
    hat_d, sum_d = dense.project(x, grad=True, bias_sum=True)
    hat_p, sum_p = patch.project(x, grad=True, bias_sum=True)
    assert hat_d.device.type == device
    torch.testing.assert_close(hat_d, hat_p, **F32)
    torch.testing.assert_close(sum_d, x.sum((0, 1)), **F32)
    torch.testing.assert_close(sum_p, sum_d, **F32)
    torch.testing.assert_close(dense.project_back(hat_d), patch.project_back(hat_p), **F32)
    full = [(i, j) for i in range(8) for j in range(8)]
    for impl in ("dense", "patch"):
        p = WHTProjector((14, 10), full, padding="zero", impl=impl)
        torch.testing.assert_close(p.project_back(p.project(x, grad=True)), x, **F32)


# ---- low precision and autocast against float32 -----------------------------------------------
def _lp_dtypes(device: str) -> list[torch.dtype]:
    return [torch.bfloat16, torch.float16] if device == "cuda" else [torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_parameters_track_float32(device):
    """A layer whose parameters and input are bf16 / fp16 gives gradients in that dtype, within
    a few percent of the float32 gradients of the same layer."""
    torch.manual_seed(4)
    lin = nn.Linear(64, 48)
    x, g = torch.randn(4, 49, 64), torch.randn(4, 49, 48)
    ref = _grads(LBPLinear.from_module(copy.deepcopy(lin), LBPConfig(radius=4)).to(device),
                 x.to(device), g.to(device))  # fmt: skip
    for dt in _lp_dtypes(device):
        layer = LBPLinear.from_module(copy.deepcopy(lin), LBPConfig(radius=4)).to(device, dt)
        got = _grads(layer, x.to(device, dt), g.to(device, dt))
        for a, e in zip(got, ref):
            assert a.dtype == dt
            assert _rel_err(a, e) < 2e-2, (dt, _rel_err(a, e))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_tracks_float32(device):
    """Under ``torch.autocast`` (float32 parameters, low-precision compute) the gradients keep
    the parameters' dtype and stay within a few percent of the float32 run."""
    torch.manual_seed(5)
    lin = nn.Linear(64, 48)
    x, g = torch.randn(4, 49, 64, device=device), torch.randn(4, 49, 48, device=device)
    layer = LBPLinear.from_module(copy.deepcopy(lin), LBPConfig(radius=4)).to(device)
    ref = _grads(layer, x, g)
    for dt in _lp_dtypes(device):
        xx = x.clone().requires_grad_(True)
        layer.zero_grad()
        with torch.autocast(device_type=device, dtype=dt):
            y = layer(xx)
        assert y.dtype == dt
        y.backward(g.to(dt))
        got = [xx.grad, layer.weight.grad, layer.bias.grad]
        assert layer.weight.grad.dtype == torch.float32 and xx.grad.dtype == torch.float32
        for a, e in zip(got, ref):
            assert _rel_err(a, e) < 2e-2, (dt, _rel_err(a, e))


# ---- saved memory -------------------------------------------------------------------------------
def _graph_bytes(device: str, layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes the autograd graph of ``layer(x * 1)`` keeps alive. The input is made inside (a
    fresh non-leaf tensor), so it costs memory only if the graph saves it. On CUDA: the
    allocator's count after the forward, less the output (after one warm-up call that builds
    the projector's constant matrices on the device); on the CPU: the storages autograd saves.
    """
    if device == "cuda":
        del_y = layer(x * 1.0)
        del del_y
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        y = layer(x * 1.0)
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - base - y.untyped_storage().nbytes()
        del y
        return held
    seen: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x * 1.0)
    del y
    return sum(seen.values())


@pytest.mark.parametrize("device", DEVICES)
def test_saved_activation_is_the_low_rank_input(device):
    """LBP-WHT keeps ``x_hat`` (B * R rows) instead of ``x`` (B * L rows): 3/49 and 10/49 of
    the plain layer's saved input for LP_L1-2 / LP_L1-4 on a 7x7 map."""
    torch.manual_seed(6)
    lin = nn.Linear(256, 256).to(device)
    x = torch.randn(16, 49, 256, device=device, requires_grad=True)
    plain = _graph_bytes(device, lin, x)
    assert plain >= 16 * 49 * 256 * 4  # at least the input itself
    for r, rank in [(2, 3), (4, 10)]:
        lbp = LBPLinear.from_module(lin, LBPConfig(radius=r))
        got = _graph_bytes(device, lbp, x)
        # x_hat; the CUDA allocator rounds blocks up to 512 bytes
        assert 16 * rank * 256 * 4 <= got <= 16 * rank * 256 * 4 + 512, (r, got)
        assert got < plain * (rank + 1) / 49


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_peak_memory_of_a_training_step_is_lower_on_cuda():
    """``torch.cuda.max_memory_allocated`` over forward + backward of a stack of MLP layers:
    the LBP-WHT peak is below the plain one by at least most of the saved inputs."""
    dev = "cuda"

    def mlp():
        torch.manual_seed(7)
        return nn.Sequential(*[nn.Linear(512, 512) for _ in range(6)]).to(dev)

    x = torch.randn(64, 49, 512, device=dev)

    def peak(model):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model(x).square().mean().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    plain, lbp = mlp(), mlp()
    convert(lbp, [dict(target="all-linear", method="lbp", radius=2, hw=(7, 7))])
    p_plain, p_lbp = peak(plain), peak(lbp)
    one_input = x.numel() * 4
    assert p_lbp < p_plain - 2 * one_input, (p_plain, p_lbp)


# ---- torch.compile and LBP + LoRA ---------------------------------------------------------------
class _TinyNet(nn.Module):
    """A 7x7 token model: conv stem, two MLP linears, a 1x1 conv, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.mix = nn.Conv2d(16, 16, 1)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, img):
        x = self.stem(img)
        x = x + self.mix(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.fc2(torch.nn.functional.gelu(self.fc1(t)))
        return self.head(t.mean(1))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_of_a_converted_model_matches_eager(device):
    """The converted model under ``torch.compile`` gives the eager gradients. CUDA compiles
    with inductor (Triton kernels); the CPU case uses the ``aot_eager`` backend, which traces
    the same graphs (dynamo + AOTAutograd through the LBP-WHT autograd function) without a
    C++ compile, so it stays quick."""
    torch.manual_seed(8)
    net = _TinyNet()
    img = torch.randn(4, 3, 28, 28)
    report = convert(
        net, [dict(target="all-linear", method="lbp", radius=4)], example_input=img[:1]
    )
    assert {r.name for r in report.replaced} == {"mix", "fc1", "fc2"}
    net, img = net.to(device), img.to(device)

    def grads(model):
        model.zero_grad()
        model(img).square().mean().backward()
        return [p.grad.detach().clone() for p in model.parameters()]

    want = grads(net)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="inductor" if device == "cuda" else "aot_eager")
    for _ in range(2):  # the second call runs the cached compiled graph
        got = grads(compiled)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_lbp_lora_layer_matches_reference(device):
    """One LBP + LoRA linear (Table 6): input and adapter gradients on the device against the
    NumPy reference with adapters; the frozen base gets none."""
    torch.manual_seed(9)
    base = nn.Linear(6, 5)
    layer = LBPLoRALinear.from_module(base, LBPConfig(radius=4), LoRAConfig(rank=3, alpha=6))
    with torch.no_grad():
        layer.lora_B.normal_()
    layer = layer.to(device)
    x, g = torch.randn(2, 49, 6), torch.randn(2, 49, 5)
    xd = x.clone().to(device).requires_grad_(True)
    layer(xd).backward(g.to(device))
    assert layer.weight.grad is None
    a, b = (t.detach().double().cpu().numpy() for t in (layer.lora_A, layer.lora_B))
    ref = lbp_backward_reference(
        x.double().numpy(),
        layer.weight.detach().double().cpu().numpy(),
        g.double().numpy(),
        (7, 7),
        select_bases("lp_l1", radius=4),
        lora=(a, b, 2.0),
    )
    for got, key in ((xd.grad, "g_x"), (layer.lora_A.grad, "g_A"), (layer.lora_B.grad, "g_B")):
        np.testing.assert_allclose(got.double().cpu().numpy(), ref[key], **F32)


@pytest.mark.parametrize("device", DEVICES)
def test_functional_on_the_device_keeps_tensors_there(device):
    """``lbp_forward`` builds its constant matrices on the input's device (no host copies)."""
    proj = WHTProjector((7, 7), select_bases("lp_l1", radius=2))
    x = torch.randn(2, 49, 8, device=device, requires_grad=True)
    w = torch.randn(4, 8, device=device, requires_grad=True)
    gx, gw = torch.autograd.grad(lbp_forward(x, w, None, proj).sum(), [x, w])
    assert gx.device.type == device and gw.device.type == device
    assert {k[2].type for k in proj._cache} == {device}


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_graph_replay_of_the_backward_matches_eager():
    """The benchmark's CUDA-graph variant replays exactly the eager LBP-WHT backward."""
    from lbp_wht.benchmark.latency import cuda_graphed

    torch.manual_seed(10)
    proj = WHTProjector((7, 7), select_bases("lp_l1", radius=4))
    x = torch.randn(8, 50, 64, device="cuda", requires_grad=True)
    w = torch.randn(32, 64, device="cuda", requires_grad=True)
    b = torch.randn(32, device="cuda", requires_grad=True)
    g = torch.randn(8, 50, 32, device="cuda")

    def build():
        y = lbp_forward(x, w, b, proj, prefix_tokens=1)
        return lambda: torch.autograd.grad(y, [x, w, b], g, retain_graph=True)

    want = build()()
    replay = cuda_graphed(build)
    for _ in range(2):
        got = replay()
    torch.cuda.synchronize()
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, **F32)
