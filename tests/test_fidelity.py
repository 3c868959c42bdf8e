"""Gradient fidelity (``lbp_wht.fidelity``, behind ``tools/analyze_gradients.py``): exact at the
full basis with zero padding, rising with r, and one layer's figures equal to a hand
computation with the independent NumPy Algorithm 1 (``tests/reference.py``)."""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from reference import _pad, bases_matrix, lbp_backward_reference

from lbp_wht.fidelity import Selection, default_selections, gradient_fidelity

CX, CY, B, H = 6, 5, 2, 7
#: The linear layers' map: their token input is a 7x7 map that no example input shows (the
#: loss functions hold the inputs), so the conversion rules say so.
MAP = {"fc": dict(hw=(H, H)), "0": dict(hw=(H, H))}


class TwoLayers(nn.Module):
    """A 1x1 conv on a 7x7 map, then a linear layer on its 49 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CX, CX, 1)
        self.fc = nn.Linear(CX, CY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.gelu(self.conv(x)).flatten(2).transpose(1, 2))


def _smooth(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A smooth map plus a little noise (most energy in low sequency, as real g_y)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, H), indexing="ij")
    base = torch.stack(
        [torch.sin(3 * yy + k) * torch.cos(2 * xx - k) for k in range(shape[-1])], -1
    )
    return base.reshape(1, H * H, shape[-1]) + 0.1 * torch.randn(*shape, generator=g)


def _loss(x: torch.Tensor, target: torch.Tensor):
    return lambda m: (m(x) * target).sum()


def test_full_basis_with_zero_padding_is_exact():
    torch.manual_seed(0)
    model = TwoLayers()
    x = torch.randn(B, CX, H, H, requires_grad=True)
    target = torch.randn(B, H * H, CY)
    rows = gradient_fidelity(
        model, ["conv", "fc"], _loss(x, target), [Selection("lp_l1", 15, "zero")], geometry=MAP
    )
    assert len(rows) == 2 and {r["num_bases"] for r in rows} == {64}
    for r in rows:
        for key in ("cos_gw", "cos_gx", "energy_share"):
            assert r[key] == pytest.approx(1.0, abs=1e-6), (r["layer"], key)
        for key in ("relerr_gw", "relerr_gx"):
            assert r[key] < 1e-5, (r["layer"], key)
    assert {r["layer_type"] for r in rows} == {"Conv2d conv", "Linear fc"}


def test_fidelity_rises_with_r_on_a_fixed_input():
    """Zero padding, 7x7 map: the kept bases of LP_L1-r are nested, so the share of g_y's energy
    rises with every r; on this fixed smooth input the g_x and g_w cosines rise with it and the
    g_x error falls."""
    torch.manual_seed(0)
    layer = nn.Linear(CX, CY)
    x = _smooth((B, H * H, CX), 1).requires_grad_(True)
    target = _smooth((B, H * H, CY), 2)
    sels = [Selection("lp_l1", r, "zero") for r in range(2, 9)]
    rows = gradient_fidelity(nn.Sequential(layer), ["0"], _loss(x, target), sels, geometry=MAP)
    assert [r["num_bases"] for r in rows] == [3, 6, 10, 15, 21, 28, 36]
    for key in ("energy_share", "cos_gx", "cos_gw"):
        vals = [r[key] for r in rows]
        assert all(b > a + 1e-7 for a, b in zip(vals, vals[1:])), (key, vals)
    errs = [r["relerr_gx"] for r in rows]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


def test_on_whole_patches_g_x_is_an_orthogonal_projection():
    """An 8x8 map (no padding): LBP-WHT's g_x is the exact one projected onto the kept bases,
    so its relative error is sqrt(1 - cos^2) and both move monotonically with r."""
    torch.manual_seed(0)
    layer = nn.Linear(CX, CY)
    x = torch.randn(B, 64, CX, requires_grad=True)
    target = torch.randn(B, 64, CY)
    sels = [Selection("lp_l1", r, pad) for r in range(2, 9) for pad in ("zero", "reflect")]
    geometry = {"0": dict(hw=(8, 8))}
    rows = gradient_fidelity(nn.Sequential(layer), ["0"], _loss(x, target), sels, geometry=geometry)
    for r in rows:
        assert r["relerr_gx"] == pytest.approx(math.sqrt(1 - r["cos_gx"] ** 2), rel=1e-4)
    for pad in ("zero", "reflect"):  # nothing to pad: both paddings agree
        cos = [r["cos_gx"] for r in rows if r["padding"] == pad]
        assert all(b > a for a, b in zip(cos, cos[1:])), cos
    z, rf = rows[0::2], rows[1::2]
    assert all(a["cos_gw"] == pytest.approx(b["cos_gw"], abs=1e-6) for a, b in zip(z, rf))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_one_layers_figures_equal_a_hand_computation(tmp_path, padding):
    """One linear layer, loss = sum(y * T), so g_y = T: g_w and g_x from the NumPy Algorithm 1,
    cosine and relative error against x^T-style exact products, the energy share from the
    padded patches' Walsh coefficients -- against the rows (and the CSV the tool writes)."""
    torch.manual_seed(0)
    layer = nn.Linear(CX, CY)
    x = torch.randn(B, H * H, CX, requires_grad=True)
    target = torch.randn(B, H * H, CY)
    sel = Selection("lp_l1", 4, padding)
    (row,) = gradient_fidelity(nn.Sequential(layer), ["0"], _loss(x, target), [sel], geometry=MAP)

    xn, gn = x.detach().double().numpy(), target.double().numpy()
    wn = layer.weight.detach().double().numpy()
    bases = [(i, j) for i in range(8) for j in range(8) if i + j < 4]
    ref = lbp_backward_reference(xn, wn, gn, (H, H), bases, padding=padding)
    exact_gw = np.einsum("blo,bli->oi", gn, xn)
    exact_gx = gn @ wn
    basis = bases_matrix([(i, j) for i in range(8) for j in range(8)], 8)  # (64, 64)
    energy = np.zeros(64)
    for b in range(B):
        gp, _, _ = _pad(gn[b].reshape(H, H, CY), 8, padding)
        coef = basis.T @ gp.reshape(64, CY)  # one 8x8 patch
        energy += (coef**2).sum(1) / 64
    kept = [i * 8 + j for i, j in bases]
    hand = dict(
        cos_gw=_cos(ref["g_w"], exact_gw),
        relerr_gw=_rel(ref["g_w"], exact_gw),
        cos_gx=_cos(ref["g_x"], exact_gx),
        relerr_gx=_rel(ref["g_x"], exact_gx),
        energy_share=energy[kept].sum() / energy.sum(),
    )
    for key, value in hand.items():
        assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert (row["selection"], row["num_bases"], row["padding"]) == ("LP_L1-4", 10, padding)

    from lbp_wht.reporting.tables import write_fidelity_csvs

    full, summary = write_fidelity_csvs([{"state": "start", **row}], tmp_path)
    (written,) = list(csv.DictReader(open(full)))
    for key, value in hand.items():
        assert float(written[key]) == pytest.approx(value, abs=2e-6), key
    (mean,) = list(csv.DictReader(open(summary)))
    assert float(mean["cos_gw"]) == pytest.approx(hand["cos_gw"], abs=2e-6)
    with pytest.raises(ValueError, match=r"unknown columns \['seed'\]"):
        write_fidelity_csvs([{"state": "start", "seed": 0, **row}], tmp_path / "bad")


def test_selections_and_errors():
    sels = default_selections()
    labels = [s.label for s in sels if s.padding == "reflect"]
    assert labels[:7] == [f"LP_L1-{r}" for r in range(2, 9)] and "LP_Linf-3" in labels
    assert [s.num_bases for s in sels if s.family == "lhe" and s.padding == "zero"] == [
        3, 6, 10, 15, 21, 28, 36,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="family"):
        Selection("lp_l2", 4)
    with pytest.raises(ValueError, match="padding"):
        Selection("lp_l1", 4, "edge")
    with pytest.raises(ValueError, match="r must be at most"):
        Selection("lp_l1", 16)
    with pytest.raises(ValueError, match="no layer"):
        gradient_fidelity(nn.Linear(2, 2), ["nope"], lambda m: m.weight.sum())


FMNIST = Path(os.environ.get("FMNIST_ROOT", "/usr/share/datasets/fashion-mnist"))


@pytest.mark.skipif(
    not any((FMNIST / f).exists() for f in ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz")),
    reason=f"Fashion-MNIST not in {FMNIST} (make data)",
)
def test_the_demo_config_path(tmp_path):
    """``analyze_config`` on the CPU demo's config: its six converted layers, a real batch,
    exact at the full basis, a checkpoint state, the README and figures written."""
    pytest.importorskip("mmpretrain")
    import pandas as pd

    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.cost_record import build_model, load_config
    from lbp_wht.integrations.fidelity import analyze_config
    from lbp_wht.reporting import figures, tables

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
    import fidelity_readme as report

    root = Path(__file__).resolve().parents[1]
    opts = {
        f"{s}_dataloader.dataset.dataset.data_root": str(FMNIST) for s in ("train", "val", "test")
    }
    cfg = load_config(root / "configs/mini/demo/target.py", {**opts, "load_from": None})
    torch.manual_seed(5)
    ckpt = tmp_path / "end.pth"
    torch.save({"state_dict": build_model(load_config(root / "configs/mini/demo/target.py",
                                                      {"lbp.method": "full_bp"})).state_dict()},
               ckpt)  # fmt: skip
    sels = [Selection("lp_l1", 4), Selection("lp_l1", 15, "zero")]
    rows = analyze_config(cfg, {"end": str(ckpt)}, batch_size=8, selections=sels)
    layers = sorted({r["layer"] for r in rows})
    assert len(layers) == 6 and all(n.startswith("backbone.network.3.") for n in layers)
    assert len(rows) == 2 * 2 * 6 and {r["state"] for r in rows} == {"start", "end"}
    for r in rows:
        if r["num_bases"] == 64:
            # float32 through six layers: direction exact to 1e-5, size to 1e-3
            assert r["cos_gw"] == pytest.approx(1.0, abs=1e-5) and r["relerr_gw"] < 1e-3
    start = [r for r in rows if r["state"] == "start" and r["num_bases"] == 10]
    end = [r for r in rows if r["state"] == "end" and r["num_bases"] == 10]
    assert [r["cos_gw"] for r in start] != [r["cos_gw"] for r in end]  # other weights
    df = pd.DataFrame(rows)
    tables.write_fidelity_csvs(rows, tmp_path)
    figures.plot_fidelity_layers(df, tmp_path), figures.plot_fidelity_selections(df, tmp_path)
    meta = dict(config="target.py", batch=8, seed=0, layers=layers,
                states={"start": "init", "end": "ckpt"})  # fmt: skip
    text = report.write_readme(tmp_path, df, command="`x`", machine="m", seconds=1.0, meta=meta)
    assert "## Does gradient fidelity predict accuracy?" in text.read_text()
    assert (tmp_path / "fidelity_layers.png").stat().st_size > 0
