"""LHE base selection as a library API (lbp_wht.lhe) and the mmengine hook built on it,
including a run killed during profiling and resumed from its checkpoint."""

from __future__ import annotations

import json
import logging
import types

import pytest
import torch
import torch.nn as nn

from lbp_wht import LBPConfig, LBPLinear, convert, walsh_matrix
from lbp_wht.lhe import LHEProfiler, profile_lhe

C = 3


def _pattern(bases: list[tuple[int, int]], scale: float) -> torch.Tensor:
    """g_y of shape (1, 64, C) on an 8x8 map: the sum of the given WHT bases, times scale."""
    w = walsh_matrix(8, torch.float64)
    g = sum(torch.outer(w[i], w[j]) for i, j in bases) * scale
    return g.reshape(1, 64, 1).expand(1, 64, C).clone()


def _model(num_bases: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(C, C).double())
    # the input is the tokens of an 8x8 map (no image for a dry forward to trace): the rule
    rule = dict(target="0", method="lbp", selection="lhe", num_bases=num_bases, hw=(8, 8))
    convert(model, [rule])
    return model.train()


def _step(model: nn.Module, g: torch.Tensor) -> None:
    x = torch.randn(1, 64, C, dtype=torch.float64, requires_grad=True)
    (model(x) * g).sum().backward()  # the output gradient is exactly g


STRONG = [(0, 0), (1, 1), (2, 2)]
WEAK = [(3, 3), (4, 4), (5, 5)]


def test_profile_lhe_picks_the_strongest_bases_and_sets_them():
    model = _model()
    gs = iter([_pattern(STRONG, 10.0), _pattern(WEAK, 1.0)])
    chosen = profile_lhe(model, lambda: _step(model, next(gs)), steps=2)
    assert sorted(chosen["0"]) == STRONG
    assert sorted(model[0].bases) == STRONG and not model[0].record_spectrum
    assert model.state_dict()["0.lbp_bases"].shape == (3, 2)


def test_profiler_energies_match_the_definition_and_state_roundtrips():
    model = _model()
    g = _pattern([(0, 1)], 2.0)
    prof = LHEProfiler(model)
    prof.start()
    _step(model, g)
    prof.sync()
    _step(model, g)  # not synced yet: still counted by energies()
    e = prof.energies()["0"]
    # E_ij = sum_c (sum_patch g * B_ij)^2 / n^2; here g = 2 B_01 on each of C channels
    assert e[0, 1].item() == pytest.approx(2 * C * (2 * 64) ** 2 / 64)
    assert e.sum().item() == pytest.approx(e[0, 1].item())
    prof.sync()
    state = prof.state_dict()
    assert state["iterations"] == 2 and state["steps"] == {"0": 2}
    other = LHEProfiler(_model())
    other.load_state_dict(state)
    torch.testing.assert_close(other.energies()["0"], e)
    with pytest.raises(ValueError, match="not profiled"):
        other.load_state_dict({"energy": {"nope": e}})


def test_nan_energies_and_silent_layers_are_errors():
    model = _model()
    prof = LHEProfiler(model)
    prof.start()
    with pytest.raises(RuntimeError, match=r"layers \['0'\] recorded no g_y spectrum"):
        prof.finish()
    _step(model, _pattern(STRONG, 1.0) * float("nan"))
    with pytest.raises(ValueError, match="layer '0'.*non-finite"):
        prof.finish()
    with pytest.raises(ValueError, match="no LHE layer"):
        profile_lhe(nn.Sequential(nn.Linear(2, 2)), lambda: None, steps=1)
    with pytest.raises(ValueError, match="steps must be an int"):
        profile_lhe(model, lambda: None, steps=0)


def test_lhe_with_lora_adapters():
    """LHE's number of bases and the LoRA rank have distinct names, so they combine."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(C, C).double())
    convert(
        model,
        [dict(target="0", method="lbp_lora", selection="lhe", num_bases=2, lora_rank=2, hw=(8, 8))],
    )
    g = _pattern([(0, 0), (0, 2)], 1.0)
    profile_lhe(model, lambda: _step(model, g), steps=1)
    assert sorted(model[0].bases) == [(0, 0), (0, 2)] and model[0].lora_rank == 2


def test_untrained_lhe_layer_warns_that_it_runs_exact_backprop():
    layer = LBPLinear.from_module(nn.Linear(C, C), LBPConfig(selection="lhe", num_bases=2))
    with pytest.warns(UserWarning, match="no bases yet.*exact backprop"):
        layer(torch.randn(1, 49, C, requires_grad=True))


# ---- the mmengine hook: a run killed during profiling resumes with all of its spectra -------
class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _runner(model: nn.Module, work_dir, lhe_iters: int) -> types.SimpleNamespace:
    model.lbp_info = dict(
        cfg=dict(
            select="lhe", lhe_iters=lhe_iters, rank=3, spectrum_layer=None, spectrum_iters=None
        )
    )
    logger = logging.getLogger(f"lhe-test-{id(model)}")
    logger.setLevel(logging.INFO)
    logs = _Logs()
    logger.addHandler(logs)
    return types.SimpleNamespace(
        model=model, iter=0, work_dir=str(work_dir), logger=logger, logs=logs
    )


def _iterations(hook, runner, patterns, first: int) -> None:
    for i in range(first, first + len(patterns)):
        runner.iter = i
        _step(runner.model, patterns[i - first])
        hook.after_train_iter(runner, i)


def test_hook_resume_during_profiling_keeps_the_spectra(tmp_path):
    pytest.importorskip("mmengine")
    from lbp_wht.integrations.hooks import LBPWHTHook

    patterns = [_pattern(STRONG, 10.0)] * 2 + [_pattern(WEAK, 1.0)] * 2

    # uninterrupted: 4 profiling iterations
    (tmp_path / "a").mkdir()
    runner = _runner(_model(), tmp_path / "a", lhe_iters=4)
    hook = LBPWHTHook()
    hook.before_train(runner)
    _iterations(hook, runner, patterns, 0)
    want = json.loads((tmp_path / "a" / "lhe_bases.json").read_text())
    assert sorted(map(tuple, want["bases"]["0"])) == STRONG

    # killed after iteration 2 (checkpoint saved then), resumed in a fresh process
    (tmp_path / "b").mkdir()
    runner = _runner(_model(), tmp_path / "b", lhe_iters=4)
    hook = LBPWHTHook()
    hook.before_train(runner)
    _iterations(hook, runner, patterns[:2], 0)
    checkpoint = dict(meta=dict(iter=2), state_dict=runner.model.state_dict())
    hook.before_save_checkpoint(runner, checkpoint)
    assert checkpoint["lbp_lhe_profile"]["iterations"] == 2

    model = _model()
    model.load_state_dict(checkpoint["state_dict"])
    runner = _runner(model, tmp_path / "b", lhe_iters=4)
    hook = LBPWHTHook()
    hook.after_load_checkpoint(runner, checkpoint)
    runner.iter = 2
    hook.before_train(runner)
    started = [line for line in runner.logs.lines if "profiling" in line]
    assert "for 2 iterations (iterations 3-4 of lbp.lhe_iters=4" in started[0]
    assert "resumed with the spectra of 2 profiled iterations" in started[0]
    _iterations(hook, runner, patterns[2:], 2)
    got = json.loads((tmp_path / "b" / "lhe_bases.json").read_text())
    assert got["bases"] == want["bases"]  # the same bases as the run that was never killed
    assert got["profiled_iterations"] == want["profiled_iterations"] == 4
    assert any("from the g_y spectra of 4 iterations" in line for line in runner.logs.lines)
