"""``LBPWHTHook``: what LBP-WHT needs *during* training (the layers are injected at build time).

- logs the conversion report (what was converted, what trains) and writes it to
  ``<work_dir>/lbp_conversion.txt``; checks that the optimizer holds exactly the trainable
  parameters;
- LHE base selection (Sec. 4.5, Table 4), through :class:`lbp_wht.lhe.LHEProfiler`: with
  ``lbp.select='lhe'`` the LBP layers start with no bases and run exact backprop while
  recording the WHT energy spectrum of ``g_y``; after every iteration the spectra are summed
  over ranks into the profiler's totals; after ``lbp.lhe_iters`` iterations the ``lbp.rank``
  strongest bases of every layer are fixed. The chosen bases go to
  ``<work_dir>/lhe_bases.json`` and into checkpoints (``lbp_bases``, and the layers' state
  dicts) so a resumed run and ``tools/test.py`` see the same layers. A checkpoint saved while
  profiling also holds the totals so far (``lbp_lhe_profile``): a run killed during profiling
  resumes with all the spectra it had and profiles only the iterations that remain;
- Figure 5: with ``lbp.spectrum_layer='<module name>'`` the ``g_y`` spectrum of that LBP layer
  is recorded for ``lbp.spectrum_iters`` iterations (or the whole run) and saved to
  ``<work_dir>/spectrum.json`` (``energy``: order x order, ``steps``, ``layer``).
"""

from __future__ import annotations

import json
import os.path as osp
from typing import Any

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS

from lbp_wht.io import atomic_write
from lbp_wht.lhe import LHEProfiler

from .build import lbp_layers

__all__ = ["LBPWHTHook"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if get_world_size() > 1:
        t = t.clone()
        all_reduce(t, op="sum")
    return t


@HOOKS.register_module()
class LBPWHTHook(Hook):
    """Training-time side of LBP-WHT (see module docstring). Added by ``inject_lbp``."""

    priority = "NORMAL"

    def __init__(self) -> None:
        self._lhe: LHEProfiler | None = None
        self._lhe_resumed: dict | None = None
        self._spectrum_open = False

    @staticmethod
    def _info(runner: Any) -> dict:
        model = _unwrap(runner.model)
        info = getattr(model, "lbp_info", None)
        if info is None:
            raise RuntimeError(
                "LBPWHTHook: the model was not built by LBPWHTModel (no lbp_info). Build the "
                "runner with runner_type='LBPWHTRunner' (configs/_base_/default_runtime.py) or call "
                "lbp_wht.integrations.build.inject_lbp(cfg) first."
            )
        return info

    def before_run(self, runner: Any) -> None:
        info = self._info(runner)
        cfg = info["cfg"]
        model = _unwrap(runner.model)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        text = (
            f"LBP-WHT method={cfg['method']} scope={cfg['scope']} model={cfg['model']} "
            f"select={cfg['select']} r={cfg['r']} rank={info['rank']} "
            f"norm_eval={info['norm_eval']}\n"
            f"trainable parameters: {n_train:,} of {n_all:,} "
            f"({len(info['trainable'])} tensors; patterns {info['trainable_patterns']})\n"
            f"{info['report']}\n"
        )
        runner.logger.info("\n" + text)
        if is_main_process():
            names = "\n".join(info["trainable"])
            path = osp.join(runner.work_dir, "lbp_conversion.txt")
            atomic_write(path, f"{text}\ntrainable parameter names:\n{names}\n")
        optim = getattr(runner, "optim_wrapper", None)
        if isinstance(optim, OptimWrapper):
            in_optim = {id(p) for g in optim.optimizer.param_groups for p in g["params"]}
            trainable = {id(p) for p in model.parameters() if p.requires_grad}
            if in_optim != trainable:
                runner.logger.warning(
                    f"LBPWHTHook: the optimizer holds {len(in_optim)} tensors but "
                    f"{len(trainable)} are trainable ({len(in_optim - trainable)} frozen ones "
                    f"in it, {len(trainable - in_optim)} trainable ones missing); was the "
                    "optimizer built by another constructor?"
                )

    def before_train(self, runner: Any) -> None:
        cfg = self._info(runner)["cfg"]
        layers = lbp_layers(runner.model)
        pending = [n for n, m in layers.items() if m.bases is None and cfg["select"] == "lhe"]
        if pending and runner.iter >= cfg["lhe_iters"]:
            raise RuntimeError(
                "LHE: resumed past lbp.lhe_iters but the checkpoint holds no lbp_bases"
            )
        if pending:
            start, end = runner.iter, cfg["lhe_iters"]
            self._lhe = LHEProfiler(runner.model, pending)
            self._lhe.start()
            restored = ""
            if self._lhe_resumed is not None:
                self._lhe.load_state_dict(self._lhe_resumed)
                restored = (
                    f"; resumed with the spectra of {self._lhe.iterations} profiled iterations "
                    "from the checkpoint"
                )
            elif start > 0:
                runner.logger.warning(
                    f"LHE: resuming at iteration {start} without saved spectra (checkpoint from "
                    f"an older version?): the bases are chosen from the remaining {end - start} "
                    "iterations only"
                )
            self._lhe_resumed = None
            runner.logger.info(
                f"LHE: profiling g_y spectra of {len(pending)} layers for {end - start} iterations "
                f"(iterations {start + 1}-{end} of lbp.lhe_iters={end}; exact backprop "
                f"meanwhile){restored}"
            )
        name = cfg["spectrum_layer"]
        if name:
            if name not in layers:
                raise ValueError(
                    f"lbp.spectrum_layer={name!r} is not an LBP-WHT layer of this model; "
                    f"LBP layers: {sorted(layers)[:20]}{' ...' if len(layers) > 20 else ''}"
                )
            layers[name].reset_spectrum()
            layers[name].record_spectrum = True
            self._spectrum_open = True

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        cfg = self._info(runner)["cfg"]
        done = runner.iter + 1  # the loop increments runner.iter after this hook
        if self._lhe is not None:
            self._lhe.sync(_sum_over_ranks)  # all ranks hold the same totals from here on
            if done >= cfg["lhe_iters"]:
                self._finish_lhe(runner, cfg)
        if self._spectrum_open and cfg["spectrum_iters"] and done >= cfg["spectrum_iters"]:
            self._save_spectrum(runner, cfg)

    def after_train(self, runner: Any) -> None:
        cfg = self._info(runner)["cfg"]
        if self._lhe is not None:  # fewer iterations than lhe_iters: select with what we have
            self._finish_lhe(runner, cfg)
        if self._spectrum_open:
            self._save_spectrum(runner, cfg)

    def _finish_lhe(self, runner: Any, cfg: dict) -> None:
        profiler = self._lhe
        assert profiler is not None
        # anything recorded after the last iteration's sync (not another iteration)
        profiler.sync(_sum_over_ranks, count=False)
        try:
            chosen = profiler.choose()
        except RuntimeError as err:
            raise RuntimeError(f"{err} in {profiler.iterations} iterations") from err
        for name, bases in chosen.items():
            profiler.layers[name].set_bases(bases)
        for name, m in profiler.layers.items():
            if name != cfg["spectrum_layer"]:
                m.record_spectrum = False
        self._lhe = None
        runner.logger.info(
            f"LHE: fixed {cfg['rank']} bases in {len(chosen)} layers from the g_y spectra of "
            f"{profiler.iterations} iterations"
        )
        if is_main_process():
            chosen_json = dict(
                iterations=runner.iter + 1,
                profiled_iterations=profiler.iterations,
                rank=cfg["rank"],
                bases={n: [list(b) for b in v] for n, v in chosen.items()},
            )
            atomic_write(osp.join(runner.work_dir, "lhe_bases.json"), json.dumps(chosen_json))

    def _save_spectrum(self, runner: Any, cfg: dict) -> None:
        name = cfg["spectrum_layer"]
        m = lbp_layers(runner.model)[name]
        energy = m.spectrum_energy
        if energy is None:
            energy = torch.zeros(m.order, m.order, dtype=torch.float64)
        energy = _sum_over_ranks(energy)
        steps = _sum_over_ranks(torch.tensor([float(m.spectrum_steps)], dtype=torch.float64))
        if m.bases is not None:  # an LHE layer still profiling keeps recording
            m.record_spectrum = False
        self._spectrum_open = False
        if is_main_process():
            path = osp.join(runner.work_dir, "spectrum.json")
            spectrum = dict(layer=name, order=m.order, steps=int(steps.item()))
            spectrum.update(iterations=runner.iter + 1, energy=energy.tolist())
            atomic_write(path, json.dumps(spectrum))
            runner.logger.info(f"saved g_y WHT spectrum of {name} to {path}")

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        bases = {
            n: [list(b) for b in m.bases]
            for n, m in lbp_layers(runner.model).items()
            if m.bases is not None and m.lbp_config.selection == "lhe"
        }
        if bases:
            checkpoint["lbp_bases"] = bases
        if self._lhe is not None:  # profiling: keep the totals so far (synced every iteration)
            checkpoint["lbp_lhe_profile"] = self._lhe.state_dict()

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if not isinstance(checkpoint, dict):
            return
        profile = checkpoint.get("lbp_lhe_profile")
        if isinstance(profile, dict):
            self._lhe_resumed = profile
        saved = checkpoint.get("lbp_bases")
        if not saved:
            return
        layers = lbp_layers(runner.model)
        for n, b in saved.items():
            if n in layers:
                layers[n].set_bases([tuple(x) for x in b])
        print_log(f"restored LHE bases of {len(saved)} layers from the checkpoint", "current")
