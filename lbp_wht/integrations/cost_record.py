"""The cost record of one experiment: backprop FLOPs and training memory per training image.

Builds the config's real model (random init: cost does not depend on weights), injects the
method exactly as training does (``LBPWHTModel``: convert + freeze + norm_eval), and runs one
training step on a random batch at the config's resolution and input channels (the model's /
config's ``backbone.in_channels``, else 3):

* backprop FLOPs counted on the autograd graph with ``torch.utils.flop_counter.FlopCounterMode``
  (backward, plus the forward work done only for the backward: LBP-WHT's projection of ``x``;
  see ``lbp_wht.measure``), broken down per module and per module type;
* the analytic Table 1 model (``lbp_wht.cost``) for every linear layer / 1x1 conv, in the
  paper's convention and in the executed-GEMM convention, next to the counted value;
* memory kept for backward (saved activations, deduplicated by storage), weight-gradient bytes,
  trainable parameters, and on CUDA the allocator's peak;
* an estimate of the elementwise work the matmul counter does not count.

:func:`analyze` returns the record (``lbp_wht.runs.records`` format, every figure per training
image: a batch of ``batch`` divided by the batch size); :func:`format_record` prints it,
:func:`write_layers_csv` writes its per-layer rows.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import os.path as osp
import platform
from typing import Any

from lbp_wht.experiments.methods import method_spec
from lbp_wht.experiments.models import MODEL_SPECS, model_spec, preset_models


def _default_size(model: Any) -> int | None:
    """The input side of a preset model when a config does not say (paper Sec. 4.1:
    ``ModelSpec.img_size``), None for any other name."""
    spec = MODEL_SPECS.get(model) if isinstance(model, str) else None
    return spec.img_size if spec is not None and spec.has_preset else None


# --------------------------------------------------------------------------------------------
# Config and model
# --------------------------------------------------------------------------------------------
def load_config(path: str | os.PathLike, cfg_options: dict | None = None):
    """``Config.fromfile`` (its ``custom_imports`` run) with ``--cfg-options`` merged.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    from mmengine.config import Config

    if not osp.isfile(path):
        raise FileNotFoundError(f"config {path} does not exist")
    cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def config_from_flags(
    model: str,
    method: str,
    scope: str,
    *,
    select: str | None = None,
    r: int | None = None,
    num_classes: int | None = None,
    size: int | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
):
    """A minimal config for ``--model/--method/--scope`` (no config file): the preset model
    (``lbp_wht.experiments.presets.model_config``) and an ``lbp`` block. ``select``, ``r``,
    ``lora_rank`` and ``lora_alpha`` go into the block when given (None: the block's default,
    i.e. the core's).

    Raises:
        ValueError: ``model`` is not a preset model and no ``size`` is given.
    """
    from mmengine.config import Config

    if size is None and _default_size(model) is None:
        raise ValueError(
            f"unknown model {model!r} (no default input size); preset models: "
            f"{sorted(preset_models())}"
        )

    import lbp_wht.integrations.models  # noqa: F401  (registers the convertible backbones)
    from lbp_wht.experiments.presets import model_config

    seg = model_spec(model).task == "seg"
    if num_classes is None:
        num_classes = 19 if seg else 100
    side = size or _default_size(model)
    cfg = dict(
        default_scope="mmseg" if seg else "mmpretrain",
        model=model_config(model, num_classes=num_classes),
        lbp=dict(method=method, model=model, scope=scope),
    )
    given = dict(select=select, r=r, lora_rank=lora_rank, lora_alpha=lora_alpha)
    cfg["lbp"].update({k: v for k, v in given.items() if v is not None})
    if seg:
        cfg["crop_size"] = (side, side)
    else:
        cfg["img_size"] = side
    return Config(cfg)


def input_size(cfg: Any, override: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """Training resolution: ``--size`` (side, or (H, W)), else ``crop_size`` / ``img_size`` of
    the config, else a ``RandomResizedCrop`` / ``RandomCrop`` in the training pipeline, else the
    preset default."""
    if override:
        if isinstance(override, (tuple, list)):
            return (int(override[0]), int(override[1]))
        return (override, override)
    crop = cfg.get("crop_size")
    if crop:
        return (int(crop[0]), int(crop[1]))
    if cfg.get("img_size"):
        return (int(cfg.img_size), int(cfg.img_size))
    pipeline = cfg.get("train_pipeline") or []
    for step in pipeline:
        if step.get("type") in ("RandomResizedCrop", "RandomCrop"):
            s = step.get("scale", step.get("crop_size"))
            return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
    side = _default_size((cfg.get("lbp") or {}).get("model"))
    if side is not None:
        return (side, side)
    raise ValueError("cannot tell the input resolution from the config; pass --size")


def input_channels(cfg: Any, model: Any = None) -> int:
    """Channels of the input image: the built model's ``backbone.in_channels`` where the
    backbone keeps it, else the config's ``model.backbone.in_channels`` (inside an
    ``LBPWHTModel`` wrapper too), else 3. The mini models read 1-channel Fashion-MNIST."""
    backbone = getattr(model, "backbone", None) if model is not None else None
    c = getattr(backbone, "in_channels", None)
    if isinstance(c, int) and c > 0:
        return c
    mcfg = cfg.get("model") or {}
    if mcfg.get("type") == "LBPWHTModel":
        mcfg = mcfg.get("model") or {}
    c = (mcfg.get("backbone") or {}).get("in_channels")
    return int(c) if c else 3


def build_model(cfg: Any):
    """Build the converted model the way training does (``inject_lbp`` + ``LBPWHTModel``)."""
    from mmengine.registry import MODELS, init_default_scope

    from lbp_wht.integrations.build import inject_lbp

    init_default_scope(cfg.get("default_scope", "mmpretrain"))
    inject_lbp(cfg)
    return MODELS.build(cfg.model)


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------
def _inclusive(per_module: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    out = {"fwd": 0.0, "fwd_nograd": 0.0, "bwd": 0.0}
    for mod, v in per_module.items():
        if mod == name or mod.startswith(name + "."):
            for k in out:
                out[k] += v.get(k, 0.0)
    return out


def _saved_by_type(saved: dict[str, float], modules: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, v in saved.items():
        t = type(modules[name]).__name__ if name in modules else "<outside modules>"
        out[t] = out.get(t, 0.0) + v
    return out


def analyze(
    cfg: Any,
    *,
    batch: int = 1,
    device: str = "cpu",
    size: int | tuple[int, int] | None = None,
    elementwise: bool = True,
    seed: int = 0,
    trainable: list[str] | None = None,
    input_grad: bool = False,
    extra_rules: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build, inject, measure. Returns a JSON-able record of per-image figures.

    Variants used to test accounting hypotheses (`analysis/cost_hypotheses.py` in the repository):

    * ``extra_rules``: :func:`lbp_wht.convert` rules applied after the preset's conversion
      (layers the preset leaves plain; under ``lbp.variant='authors'`` new LBP-WHT layers
      also always compute ``g_x``), before ``trainable``;
    * ``trainable``: re-freeze with these globs after the preset's freeze (LoRA layers keep
      their base weights frozen, :func:`lbp_wht.freeze`);
    * ``input_grad``: every module that owns a trainable parameter receives an input that
      requires grad, so it also computes ``g_x`` (e.g. the first layer of a partially trained
      stage, whose input comes from the frozen part).
    """
    import torch

    from lbp_wht import cost
    from lbp_wht.measure import measure_step

    torch.manual_seed(seed)
    h, w = input_size(cfg, size)
    model = build_model(cfg).to(device)
    model.train()
    info = getattr(model, "lbp_info", {})
    lbp = info.get("cfg", dict(cfg.get("lbp", {})))
    variant: dict[str, Any] = {}
    if extra_rules:
        from lbp_wht import convert
        from lbp_wht.conversion import parse_rule

        from .build import always_compute_input_grad, lbp_layers

        before = set(lbp_layers(model))
        example = torch.zeros(1, input_channels(cfg, model), h, w, device=device)
        convert(model, extra_rules, batchnorm_guard=False, example_input=example)
        if info.get("variant") == "authors":
            new = [m for n, m in lbp_layers(model).items() if n not in before]
            always_compute_input_grad(new)
        # canonical keys, JSON-ready (records written before the typed rules hold the presets'
        # old spelling, select / r / rank / alpha: kept as written, nothing reads them back)
        variant["extra_rules"] = [parse_rule(r, i).to_dict() for i, r in enumerate(extra_rules)]
    if trainable is not None:
        from lbp_wht import freeze

        freeze(model, trainable, strict=False)
        variant["trainable"] = list(trainable)
    channels = input_channels(cfg, model)
    x = torch.randn(batch, channels, h, w, device=device)
    grad_handles = []
    if input_grad:
        from .build import always_compute_input_grad

        variant["input_grad"] = True
        owners = [
            m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        grad_handles = always_compute_input_grad(owners)

    def forward(m, inp):
        return m(inp, mode="tensor")

    modules = dict(model.named_modules())
    # Trace layer geometry during the counted training forward.
    tracer = cost.LinearLayerTracer(model)
    meas = measure_step(
        model,
        x,
        forward=forward,
        batch=batch,
        elementwise=elementwise,
        forward_context=tracer,
    )
    for hd in grad_handles:
        hd.remove()
    geoms = tracer.geoms
    per = meas.per_image()
    rows = []
    an_t1 = an_gemm = 0.0
    for g in geoms:
        if not (g.need_input_grad or g.need_weight_grad or g.lora_rank is not None):
            continue
        costs_t1 = cost.model_cost(model, [g], "table1")
        if g.name not in costs_t1:
            continue
        c1 = costs_t1[g.name].scaled(1.0 / batch)
        cg = cost.model_cost(model, [g], "gemm")[g.name].scaled(1.0 / batch)
        counted = meas.module_backprop(g.name) / batch
        an_t1 += c1.total
        an_gemm += cg.total
        hw = g.hw
        rows.append(
            dict(
                name=g.name,
                type=type(modules[g.name]).__name__,
                method=g.method,
                cx=g.cx,
                cy=g.cy,
                tokens=g.tokens // batch,
                hw=f"{hw[0]}x{hw[1]}" if hw else "",
                rank=g.rank,
                patches=g.patches,
                lora_rank=g.lora_rank,
                need_input_grad=g.need_input_grad,
                need_weight_grad=g.need_weight_grad,
                analytic_table1=c1.total,
                analytic_gemm=cg.total,
                analytic_vanilla=cost.vanilla_bp_flops(
                    g.cx,
                    g.cy,
                    g.tokens // batch,
                    need_input_grad=g.need_input_grad,
                    need_weight_grad=g.need_weight_grad or g.lora_rank is not None,
                ).total,
                projection_table1=c1.projection,
                low_rank_mm=c1.low_rank_mm,
                reverse_projection_table1=c1.reverse_projection,
                adapter=c1.adapter,
                lora_forward_extra=c1.forward_extra,
                counted=counted,
                counted_backward=per["per_module"].get(g.name, {}).get("bwd", 0.0),
                counted_forward_extra=(
                    per["per_module"].get(g.name, {}).get("fwd", 0.0)
                    - per["per_module"].get(g.name, {}).get("fwd_nograd", 0.0)
                ),
                saved_bytes=sum(
                    v
                    for mod, v in per["saved_by_module"].items()
                    if mod == g.name or mod.startswith(g.name + ".")
                ),
            )
        )
    # Backprop FLOPs by type of the module that did them (each op credited to the innermost
    # module running it, see lbp_wht.measure.ModuleAttribution): for a container such as an
    # attention block this is the work of its own code (q @ k^T, attn @ v), not its children's.
    by_type: dict[str, float] = {}
    for n, v in per["per_module"].items():
        bpv = v["bwd"] + v["fwd"] - v["fwd_nograd"]
        if not bpv:
            continue
        mod = modules.get(n)
        if mod is None:
            t = "<outside modules>" if not n else n
        else:
            t = type(mod).__name__
            if isinstance(mod, torch.nn.Conv2d) and tuple(mod.kernel_size) != (1, 1):
                k, g = tuple(mod.kernel_size), mod.groups
                t += f" {k[0]}x{k[1]}" + (" depthwise" if g > 1 and g == mod.in_channels else "")
            elif any(True for _ in mod.children()):
                t += " (own code)"
        by_type[t] = by_type.get(t, 0.0) + bpv
    linear_counted = sum(r["counted"] for r in rows)
    modules_lin = {r["name"] for r in rows}
    converted = [r for r in rows if r["method"] != "plain"]
    spec = method_spec(lbp.get("method"))
    rec = dict(
        kind="cost",
        status="complete",
        config=cfg.filename if getattr(cfg, "filename", None) else None,
        model=lbp.get("model"),
        method=lbp.get("method"),
        scope=lbp.get("scope"),
        select=lbp.get("select") if spec.has_bases else None,
        r=lbp.get("r") if spec.has_bases else None,
        rank=info.get("rank"),
        lora_rank=lbp.get("lora_rank") if spec.has_adapters else None,
        options=dict(lbp.get("options") or {}) if spec.has_options else None,
        norm_eval=info.get("norm_eval"),
        lbp_variant=info.get("variant", lbp.get("variant", "corrected")),
        resolution=[h, w],
        in_channels=channels,
        batch=batch,
        per="image",
        device=str(device),
        device_name=(
            torch.cuda.get_device_name(device)
            if str(device).startswith("cuda")
            else platform.processor() or platform.machine()
        ),
        torch=torch.__version__,
        host=platform.node(),
        date=_dt.datetime.now().isoformat(timespec="seconds"),
        backprop_flops=per["backprop_flops"],
        # integer multiply-accumulates (HOT's INT4 product for g_x), not in any FLOP figure
        int_macs=per["int_macs"],
        backward_flops=per["backward_flops"],
        forward_extra_flops=per["forward_extra_flops"],
        forward_train_flops=per["forward_flops"],
        forward_nograd_flops=per["forward_nograd_flops"],
        backward_elementwise=per["backward_elementwise"],
        forward_elementwise=per["forward_elementwise"],
        forward_nograd_elementwise=per["forward_nograd_elementwise"],
        backward_by_op=per["backward_by_op"],
        backward_elementwise_by_op=per["backward_elementwise_by_op"],
        backprop_by_type=by_type,
        linear_layers_counted=linear_counted,
        linear_layers_analytic_table1=an_t1,
        linear_layers_analytic_gemm=an_gemm,
        other_counted=per["backprop_flops"] - linear_counted,
        converted_layers=len(converted),
        lora_forward_extra=sum(r["lora_forward_extra"] for r in rows),
        saved_activation_bytes=per["saved_activation_bytes"],
        saved_linear_input_bytes=sum(r["saved_bytes"] for r in rows),
        # Inputs kept by every weight layer (linear, 1x1 and kxk conv): "x in Eq. 1", the
        # quantity Table 6's activation column tracks.
        saved_weight_layer_bytes=sum(
            v
            for mod, v in per["saved_by_module"].items()
            if mod in modules and isinstance(modules[mod], torch.nn.Linear | torch.nn.Conv2d)
        ),
        saved_by_module_type=_saved_by_type(per["saved_by_module"], modules),
        saved_param_bytes=meas.saved_param_bytes,
        saved_tensors=meas.saved_tensors / batch,
        weight_grad_bytes=meas.weight_grad_bytes,
        trainable_params=meas.trainable_params,
        trainable_tensors=meas.trainable_tensors,
        cuda_peak_bytes=meas.cuda_peak_bytes,
        cuda_step_peak_bytes=meas.cuda_step_peak_bytes,
        seconds=meas.seconds,
        variant=variant,
        # Inclusive (module + children) per-image FLOPs of the top levels of the model.
        module_flops={
            n: _inclusive(per["per_module"], n)
            for n in modules
            if n and (n.count(".") <= 2 or n in modules_lin)
        },
        notes=meas.notes,
        layers=rows,
    )
    return rec


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def _m(v: float | None) -> str:
    return "" if v is None else f"{v / 1e6:,.2f}"


def format_record(rec: dict[str, Any], max_layers: int = 60) -> str:
    """Readable terminal report of an :func:`analyze` record."""
    lines = []
    title = (
        f"{rec['model']} / {rec['method']} / {rec['scope']}"
        + (f" / {rec['select']}-{rec['r']} (R={rec['rank']})" if rec.get("rank") else "")
        + f"  at {rec.get('in_channels', 3)}x{rec['resolution'][0]}x{rec['resolution'][1]}, "
        f"per image (batch {rec['batch']})"
    )
    lines.append(title)
    lines.append("=" * len(title))
    s = [
        ("backprop MFLOPs (counted: backward + forward-for-backward)", _m(rec["backprop_flops"])),
        ("  backward pass", _m(rec["backward_flops"])),
        (
            "  forward work done for the backward (LBP projection of x)",
            _m(rec["forward_extra_flops"]),
        ),
        ("  in linear layers / 1x1 convs", _m(rec["linear_layers_counted"])),
        ("  elsewhere (attention matmuls, kxk convs, ...)", _m(rec["other_counted"])),
        ("analytic, linear layers, Table 1 convention", _m(rec["linear_layers_analytic_table1"])),
        ("analytic, linear layers, executed GEMMs", _m(rec["linear_layers_analytic_gemm"])),
        (
            "forward MFLOPs (no-grad / training)",
            f"{_m(rec['forward_nograd_flops'])} / {_m(rec['forward_train_flops'])}",
        ),
        ("LoRA extra forward MFLOPs (analytic)", _m(rec["lora_forward_extra"])),
        ("elementwise estimate, backward (M element-ops)", _m(rec["backward_elementwise"])),
        ("saved for backward, activations [MB]", f"{rec['saved_activation_bytes'] / 1e6:,.3f}"),
        (
            "  of which saved by linear layers / 1x1 convs [MB]",
            f"{rec['saved_linear_input_bytes'] / 1e6:,.3f}",
        ),
        ("weight gradients [MB]", f"{rec['weight_grad_bytes'] / 1e6:,.3f}"),
        (
            "trainable parameters",
            f"{rec['trainable_params']:,} in {rec['trainable_tensors']} tensors",
        ),
    ]
    if rec.get("cuda_peak_bytes") is not None:
        s.append(
            (
                "CUDA peak allocated [MB] (step above baseline)",
                f"{rec['cuda_peak_bytes'] / 1e6:,.1f} ({rec['cuda_step_peak_bytes'] / 1e6:,.1f})",
            )
        )
    width = max(len(a) for a, _ in s)
    lines += [f"{a:<{width}}  {b:>14}" for a, b in s]
    lines.append("")
    lines.append("backprop MFLOPs by module type (self):")
    for t, v in sorted(rec["backprop_by_type"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {t:<32} {_m(v):>12}")
    lines.append("")
    rows = rec["layers"]
    if rows:
        nw = max(len(r["name"]) for r in rows)
        head = (
            f"{'layer':<{nw}} {'method':<8} {'Cx':>5} {'Cy':>5} {'map':>7} {'R':>3} {'P':>3} "
            f"{'gx':>2} {'gw':>2} {'vanilla':>9} {'T1':>9} {'gemm':>9} {'counted':>9} {'saved KB':>9}"
        )
        lines.append("per layer (MFLOPs; T1 = Table 1 convention, gemm = as executed):")
        lines.append(head)
        for r in rows[:max_layers]:
            lines.append(
                f"{r['name']:<{nw}} {r['method']:<8} {r['cx']:>5} {r['cy']:>5} "
                f"{(r['hw'] or str(r['tokens'])):>7} {r['rank'] or '':>3} {r['patches'] or '':>3} "
                f"{'y' if r['need_input_grad'] else '-':>2} {'y' if r['need_weight_grad'] else '-':>2} "
                f"{_m(r['analytic_vanilla']):>9} {_m(r['analytic_table1']):>9} "
                f"{_m(r['analytic_gemm']):>9} {_m(r['counted']):>9} {r['saved_bytes'] / 1e3:>9.1f}"
            )
        if len(rows) > max_layers:
            lines.append(f"... {len(rows) - max_layers} more layers (see --out / --csv)")
    return "\n".join(lines)


LAYER_FIELDS = [
    "name",
    "type",
    "method",
    "cx",
    "cy",
    "tokens",
    "hw",
    "rank",
    "patches",
    "lora_rank",
    "need_input_grad",
    "need_weight_grad",
    "analytic_vanilla",
    "analytic_table1",
    "analytic_gemm",
    "projection_table1",
    "low_rank_mm",
    "reverse_projection_table1",
    "adapter",
    "lora_forward_extra",
    "counted",
    "counted_backward",
    "counted_forward_extra",
    "saved_bytes",
]


def write_layers_csv(rec: dict[str, Any], path: str) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=LAYER_FIELDS)
        wr.writeheader()
        for r in rec["layers"]:
            wr.writerow({k: r.get(k) for k in LAYER_FIELDS})
