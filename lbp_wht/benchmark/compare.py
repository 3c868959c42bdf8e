"""LBP-WHT beside its successors on one harness: per-layer latency, and the cost of a partially
trained timm ViT-B/16.

Every method is a row of the experiment vocabulary (a method key ``(method, select, r)``) and
reaches the model through its core rule (``MethodSpec.core_rule``): the same layer classes the
training path builds. Two measurements live here; the others are the project's existing tools
run with more methods (cost records of the presets, the training step, the mini protocol,
gradient fidelity):

* :func:`layer_latency`: one ``nn.Linear`` per shape (Table 8's 7x7 maps; ViT-B's 197 tokens
  with a class token), batch ``B``, inputs needing a gradient (a layer inside the trained part);
  per method the training forward + backward (``step``: compression, sampling and projection in
  the forward count) and the backward alone, all methods of a shape interleaved, medians and
  per-round ratios to Full BP, beside the counted backprop FLOP ratio (the FLOP bound), the
  integer multiply-accumulates (HOT's simulated INT4 product, outside the FLOPs) and the
  activation bytes saved for backward;
* :func:`vit_cost`: timm ``vit_base_patch16_224`` (random init; cost does not depend on the
  weights), the last ``blocks`` blocks and the head trained ("partial", as the paper's
  partial training), every linear layer of those blocks converted; counted backprop FLOPs,
  saved activation bytes and trainable parameters per image.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..experiments.methods import method_spec
from ..experiments.vocab import MethodKey, method_label
from .timing import interleaved_timings, iqr_cols, loadavg, paired_ratio, quartiles, say

__all__ = [
    "LAYER_METHODS",
    "VIT_METHODS",
    "layer_latency",
    "vit_cost",
    "converted_layer",
]

#: Methods of the per-layer benchmark: one layer, so LoRA (attention only) is LoRA-all, LHE is
#: an R = 10 selection (LP_L1-4's kernel) and LoSA (a side network) and head-only have no layer.
LAYER_METHODS: tuple[MethodKey, ...] = (
    ("full_bp", None, None),
    ("lora_all", None, None),
    ("lora_fa", None, None),
    ("velora", None, None),
    ("wta_crs", None, None),
    ("hot", None, None),
    ("instant", None, None),
    ("lbp_wht", "lp_l1", 2),
    ("lbp_wht", "lp_l1", 4),
    ("lbp_wht", "lp_l1", 6),
    ("lbp_wht", "lp_l1", 8),
    ("lbp_wht", "lp_linf", 3),
    ("lbp_wht+lora_all", "lp_l1", 4),
)
#: Methods of the ViT-B cost rows (LoRA converts the attention projections only).
VIT_METHODS: tuple[MethodKey, ...] = (
    ("full_bp", None, None),
    ("lora", None, None),
    *LAYER_METHODS[1:],
)


def converted_layer(
    key: MethodKey, cx: int, cy: int, hw: tuple[int, int], prefix: int, weight: nn.Linear
) -> nn.Module:
    """``nn.Sequential(layer=Linear(cx, cy))`` with ``weight``'s parameters, converted to the
    method of ``key`` (map ``hw`` after ``prefix`` tokens), trainable as the method trains an
    inner layer: the weight and bias (Full BP, LBP-WHT, VeLoRA, WTA-CRS) or the adapters."""
    import lbp_wht

    net = nn.Sequential()
    net.add_module("layer", copy.deepcopy(weight))
    spec = method_spec(key[0])
    rule = spec.core_rule("layer", select=key[1], r=key[2])
    if rule is not None:
        if spec.has_bases:
            rule.update(hw=hw, prefix_tokens=prefix)
        lbp_wht.convert(net, [rule])
    if spec.has_adapters:
        lbp_wht.freeze(net, ["*.lora_A", "*.lora_B"])
    return net.train()


def _shape_cases(
    cx: int,
    cy: int,
    tokens: int,
    prefix: int,
    batch: int,
    methods: Sequence[MethodKey],
    device: str = "cpu",
) -> tuple[dict[str, Callable[[], object]], dict[str, dict[str, Any]]]:
    from lbp_wht.measure import measure_step

    side = int(round((tokens - prefix) ** 0.5))
    if side * side != tokens - prefix:
        raise ValueError(f"shape ({cx}, {cy}, {tokens}, prefix {prefix}): not a square map")
    torch.manual_seed(0)
    base = nn.Linear(cx, cy)
    x = torch.randn(batch, tokens, cx).to(device).requires_grad_()
    g = torch.randn(batch, tokens, cy).to(device)
    fns: dict[str, Callable[[], object]] = {}
    info: dict[str, dict[str, Any]] = {}
    for key in methods:
        label = method_label(key)
        net = converted_layer(key, cx, cy, (side, side), prefix, base).to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        m = measure_step(net, x, loss_fn=lambda y: y.sum(), elementwise=False)
        saved = sum(v for mod, v in m.saved_by_module.items() if mod.split(".")[0] == "layer")
        info[label] = dict(
            backprop_flops=m.backprop_flops / batch,
            int_macs=m.int_macs / batch,
            saved_bytes=saved / batch,
        )
        inputs = [x, *params]
        y = net(x)

        def step(net: nn.Module = net, inputs: list = inputs) -> object:
            return torch.autograd.grad(net(x), inputs, g)

        def backward(y: torch.Tensor = y, inputs: list = inputs) -> object:
            return torch.autograd.grad(y, inputs, g, retain_graph=True)

        fns[f"{label}|step"] = step
        fns[f"{label}|backward"] = backward
    return fns, info


def layer_latency(
    shapes: dict[str, Sequence[tuple[int, ...]]],
    batches: Sequence[int],
    methods: Sequence[MethodKey] = LAYER_METHODS,
    *,
    rounds: int = 15,
    device: str = "cpu",
    log: Callable[[str], None] = say,
) -> list[dict[str, Any]]:
    """One row per (model shape, batch, method): medians of the step and backward times,
    per-round ratios to Full BP (the first method; IQR beside), the counted backprop FLOP ratio
    and the saved bytes per image.

    Args:
        shapes: ``{model: [(Cx, Cy, L) or (Cx, Cy, L, prefix), ...]}``; ``L - prefix`` tokens
            form a square map (Table 8's 7x7; ViT-B's 14x14 after the class token).
        rounds: interleaved rounds per shape and batch.
        device: ``cpu`` or ``cuda[:i]`` (CUDA events there, :func:`interleaved_timings`).

    Raises:
        ValueError: ``methods`` not starting with the reference (Full BP).
    """
    if not methods or not method_spec(methods[0][0]).reference:
        raise ValueError("methods must start with Full BP: it is the baseline of the ratios")
    rows = []
    ref = method_label(methods[0])
    for model, model_shapes in shapes.items():
        for shape in model_shapes:
            cx, cy, tokens = shape[:3]
            prefix = shape[3] if len(shape) > 3 else 0
            for batch in batches:
                fns, info = _shape_cases(cx, cy, tokens, prefix, batch, methods, device)
                load0 = loadavg()[0]
                t = interleaved_timings(fns, rounds, warmup=2, min_sample_s=5e-3, device=device)
                for key in methods:
                    label = method_label(key)
                    row: dict[str, Any] = dict(
                        model=model, device=device, cx=cx, cy=cy, tokens=tokens, prefix=prefix,
                        batch=batch,
                        method=key[0], select=key[1] or "", r=key[2] if key[2] is not None else "",
                        label=label,
                    )  # fmt: skip
                    for phase in ("step", "backward"):
                        wall = t[f"{label}|{phase}"]["wall"]
                        ratio = paired_ratio(t[f"{ref}|{phase}"]["wall"], wall)
                        row.update(iqr_cols(f"{phase}_us", quartiles(wall), 1e6))
                        row.update(iqr_cols(f"{phase}_speedup", ratio))
                    i, i0 = info[label], info[ref]
                    row.update(
                        backprop_flops=i["backprop_flops"], int_macs=i["int_macs"],
                        flop_ratio=i0["backprop_flops"] / max(i["backprop_flops"], 1.0),
                        saved_bytes=i["saved_bytes"],
                        saved_ratio=i0["saved_bytes"] / max(i["saved_bytes"], 1.0),
                        rounds=rounds, load=round(statistics.mean([load0, loadavg()[0]]), 2),
                    )  # fmt: skip
                    rows.append(row)
                    log(
                        f"{model} ({cx}, {cy}, {tokens}) B={batch} {label:<20} "
                        f"step {row['step_us']:10.0f} us x{row['step_speedup']:.2f}  "
                        f"bwd x{row['backward_speedup']:.2f}  FLOPs x{row['flop_ratio']:.2f}  "
                        f"saved x{row['saved_ratio']:.2f}"
                    )
    return rows


def vit_cost(
    methods: Sequence[MethodKey] = VIT_METHODS,
    *,
    name: str = "vit_base_patch16_224",
    blocks: int = 4,
    batch: int = 2,
    log: Callable[[str], None] = say,
) -> list[dict[str, Any]]:
    """Cost rows of timm ``name`` trained on its last ``blocks`` blocks and head (module
    docstring): per image, the counted backprop FLOPs, activation bytes saved for backward and
    trainable parameters, and their ratios to Full BP (the first method).

    The linear layers of those blocks (``qkv``, ``proj``, ``fc1``, ``fc2``; LoRA: ``qkv`` and
    ``proj``) are converted; LBP-WHT finds their 14x14 map and class token from the model's
    input (``convert(example_input=...)``).
    """
    import timm

    import lbp_wht

    if not methods or not method_spec(methods[0][0]).reference:
        raise ValueError("methods must start with Full BP: it is the baseline of the ratios")
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    labels = torch.randint(0, 1000, (batch,))
    first = len(timm.create_model(name, pretrained=False).blocks) - blocks
    trained = [f"blocks.{i}" for i in range(first, first + blocks)]
    rows: list[dict[str, Any]] = []
    for key in methods:
        spec = method_spec(key[0])
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False)
        layers = ("attn.qkv", "attn.proj") if spec.layers == "attn" else (
            "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # fmt: skip
        rules = [
            spec.core_rule(f"{b}.{layer}", select=key[1], r=key[2])
            for b in trained
            for layer in layers
        ]
        if spec.converts:
            lbp_wht.convert(model, rules, example_input=x[:1])
        scope = ["head.*", "norm.*", *(f"{b}.*" for b in trained)]
        targets = [r["target"] for r in rules if r]  # no rule: a method that converts nothing
        lbp_wht.freeze(model, spec.trainable_globs(["head.*"], scope, targets))
        m = lbp_wht.measure_step(
            model.train(), x, loss_fn=lambda out: nn.functional.cross_entropy(out, labels),
            elementwise=False,
        )  # fmt: skip
        rows.append(
            dict(
                model=name,
                scope=f"last {blocks} blocks + head",
                method=key[0],
                select=key[1] or "",
                r=key[2] if key[2] is not None else "",
                label=method_label(key),
                backprop_mflops=m.backprop_flops / batch / 1e6,
                int_mmacs=m.int_macs / batch / 1e6,
                saved_mib=m.saved_activation_bytes / batch / 2**20,
                trainable_params=m.trainable_params,
            )
        )
        log(
            f"{name} {rows[-1]['label']:<20} backprop {rows[-1]['backprop_mflops']:9.1f} MFLOPs"
            f"  saved {rows[-1]['saved_mib']:7.2f} MiB / image"
        )
    ref = rows[0]
    for row in rows:
        row["flop_ratio"] = ref["backprop_mflops"] / max(row["backprop_mflops"], 1e-9)
        row["saved_ratio"] = ref["saved_mib"] / max(row["saved_mib"], 1e-9)
    return rows
