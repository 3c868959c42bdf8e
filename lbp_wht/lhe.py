"""LHE base selection as a library API (paper Sec. 3.2, "LHE"; Table 4).

LHE keeps, per layer, the ``R`` WHT bases on which the output gradient ``g_y`` has the most
energy. Layers converted with ``LBPConfig(selection="lhe", num_bases=R)`` start without bases
and run exact backprop; while profiling they add, on every backward, the ``(n, n)`` spectrum
``E_ij = sum (sum_patch g_y * B_ij)^2 / n^2`` of ``g_y`` to a running sum. After a few steps the
strongest ``R`` bases are fixed with ``set_bases`` (and saved in the state dict).

Without any framework::

    profiler = LHEProfiler(model)
    with profiler:                       # records spectra; chooses and sets bases on exit
        for x, y in islice(loader, 10):
            loss_fn(model(x), y).backward()
            opt.step(); opt.zero_grad()

or ``profile_lhe(model, step_fn, steps=10)``. In data-parallel training, call
:meth:`LHEProfiler.sync` with a cross-process sum after each step so that every process
chooses the same bases; :meth:`state_dict` / :meth:`load_state_dict` carry a profiling run
across a checkpoint (the mmengine ``LBPWHTHook`` does both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from .bases import BaseIndex, select_bases
from .layers import LBPMixin

__all__ = ["LHEProfiler", "profile_lhe", "lhe_layers"]

Reduce = Callable[[torch.Tensor], torch.Tensor]


def lhe_layers(model: nn.Module, pending_only: bool = True) -> dict[str, LBPMixin]:
    """The LBP layers of ``model`` with an LHE selection (only those without bases yet)."""
    if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP & co.
        model = model.module
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, LBPMixin)
        and m.lbp_config.selection == "lhe"
        and (m.bases is None or not pending_only)
    }


class LHEProfiler:
    """Record ``g_y`` spectra of LHE layers, choose their bases, set them.

    Args:
        model: the converted model.
        layers: qualified names to profile (default: every LHE layer without bases).

    Totals are kept here (``(n, n)`` float64 per layer, plus step counts); :meth:`sync` adds
    what each layer's ``spectrum_energy`` gained since the previous sync.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None) -> None:
        found = lhe_layers(model, pending_only=layers is None)
        if layers is not None:
            names = list(layers)
            missing = [n for n in names if n not in found]
            if missing:
                raise ValueError(
                    f"LHEProfiler: {missing} are not LHE layers of the model; LHE layers: "
                    f"{sorted(found)[:20]}"
                )
            found = {n: found[n] for n in names}
        self.layers: dict[str, LBPMixin] = found
        self.energy: dict[str, torch.Tensor] = {}
        self.steps: dict[str, int] = {}
        self._seen: dict[str, tuple[torch.Tensor | None, int]] = {}
        self.iterations = 0
        self.active = False

    def __len__(self) -> int:
        return len(self.layers)

    def start(self) -> None:
        """Clear the layers' local spectra and start recording."""
        for m in self.layers.values():
            m.reset_spectrum()
            m.record_spectrum = True
        self._seen = {}
        self.active = True

    def stop(self) -> None:
        for m in self.layers.values():
            m.record_spectrum = False
        self.active = False

    def sync(self, reduce: Reduce | None = None, *, count: bool = True) -> None:
        """Add what the layers recorded since the last sync to the totals; with ``count``
        (the default: call it once per training iteration) count one profiled iteration.

        ``reduce`` (e.g. a cross-process sum returning a new tensor) is applied to all new
        spectra and step counts at once, so every process ends with the same totals. The
        layers' own ``spectrum_energy`` is left as it is (a Figure 5 recording of the same
        layer keeps counting).
        """
        self.iterations += int(count)
        if not self.layers:
            return
        names = list(self.layers)
        n = next(iter(self.layers.values())).order
        new = torch.zeros(len(names), n * n + 1, dtype=torch.float64)
        for k, name in enumerate(names):
            m = self.layers[name]
            seen_e, seen_s = self._seen.get(name, (None, 0))
            if m.spectrum_energy is not None:
                e = m.spectrum_energy.reshape(-1).double()
                new[k, :-1] = e if seen_e is None else e - seen_e
                self._seen[name] = (e.clone(), m.spectrum_steps)
            new[k, -1] = float(m.spectrum_steps - seen_s)
        if reduce is not None:
            new = reduce(new)
        for k, name in enumerate(names):
            add = new[k, :-1].reshape(n, n)
            self.energy[name] = self.energy[name] + add if name in self.energy else add.clone()
            self.steps[name] = self.steps.get(name, 0) + int(new[k, -1].item())

    def energies(self) -> dict[str, torch.Tensor]:
        """Totals plus anything recorded since the last sync, ``(n, n)`` float64 per layer."""
        out = {}
        for name, m in self.layers.items():
            e = self.energy.get(name)
            seen_e, _ = self._seen.get(name, (None, 0))
            if m.spectrum_energy is not None:
                local = m.spectrum_energy.double().reshape(-1)
                if seen_e is not None:
                    local = local - seen_e
                local = local.reshape(m.order, m.order)
                e = local if e is None else e + local
            out[name] = torch.zeros(m.order, m.order, dtype=torch.float64) if e is None else e
        return out

    def choose(self) -> dict[str, list[BaseIndex]]:
        """The ``num_bases`` strongest bases of each layer (nothing is set)."""
        chosen, silent = {}, []
        for name, energy in self.energies().items():
            m = self.layers[name]
            if bool(torch.isfinite(energy).all()) and not torch.any(energy > 0):
                silent.append(name)
                continue
            try:
                chosen[name] = select_bases(
                    "lhe", order=m.order, num_bases=m.lbp_config.num_bases, energy=energy
                )
            except ValueError as err:
                raise ValueError(f"LHE: layer {name!r}: {err}") from err
        if silent:
            raise RuntimeError(
                f"LHE: layers {silent[:10]} recorded no g_y spectrum (do they receive "
                "gradients, and did a training step run while profiling?)"
            )
        return chosen

    def finish(self) -> dict[str, list[BaseIndex]]:
        """Choose, set the bases on the layers, stop recording; returns the choice."""
        chosen = self.choose()
        for name, bases in chosen.items():
            self.layers[name].set_bases(bases)
        self.stop()
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """Totals (after :meth:`sync`), for a checkpoint."""
        return dict(
            iterations=self.iterations,
            energy={n: e.clone() for n, e in self.energy.items()},
            steps=dict(self.steps),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore totals saved by :meth:`state_dict` (unknown layer names are an error)."""
        unknown = sorted(set(state.get("energy", {})) - set(self.layers))
        if unknown:
            raise ValueError(
                f"LHE profile state names layers that are not profiled: {unknown[:10]}"
            )
        self.energy = {n: e.double().clone() for n, e in state.get("energy", {}).items()}
        self.steps = {n: int(s) for n, s in state.get("steps", {}).items()}
        self.iterations = int(state.get("iterations", 0))

    def __enter__(self) -> LHEProfiler:
        self.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.stop()


def profile_lhe(
    model: nn.Module, step: Callable[[], Any], steps: int
) -> dict[str, list[BaseIndex]]:
    """Run ``step()`` (one forward + backward, with or without an optimizer step) ``steps``
    times while profiling, then set and return the chosen bases of every pending LHE layer."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"profile_lhe: steps must be an int >= 1, got {steps!r}")
    profiler = LHEProfiler(model)
    if not len(profiler):
        raise ValueError("profile_lhe: the model has no LHE layer waiting for bases")
    profiler.start()
    try:
        for _ in range(steps):
            step()
            profiler.sync()
    except BaseException:
        profiler.stop()
        raise
    return profiler.finish()
