"""Adapt a timm ViT-S/16 with LBP-WHT (LP_L1-4); print one step's FLOPs and the backward
time measured on this machine (mean of 5 calls, the same batch for both).

python examples/timm_vit_lbp.py            # ImageNet weights, 224 px (downloads once)
LBP_EXAMPLE_SMOKE=1 python examples/timm_vit_lbp.py   # random init, 64 px (CI)"""

import os

import timm
import torch
import torch.utils.benchmark as benchmark

import lbp_wht

smoke = bool(os.environ.get("LBP_EXAMPLE_SMOKE"))
size = 64 if smoke else 224
model = timm.create_model(
    "vit_small_patch16_224", pretrained=not smoke, num_classes=10, img_size=size
)
x = torch.randn(2 if smoke else 8, 3, size, size)
lbp_wht.freeze(model, ["blocks.*", "head.*"])  # what trains: the blocks and the new head


def step(model):  # measure_step's FLOPs and saved bytes; mean ms of 5 backward calls (+2 warm-up)
    loss = model(x).logsumexp(-1).mean()
    t = benchmark.Timer("loss.backward(retain_graph=True)", globals={"loss": loss}).timeit(5)
    return lbp_wht.measure_step(model.train(), x), 1e3 * t.mean


plain = step(model.train())
rules = [dict(target="all-linear", method="lbp", selection="lp_l1", radius=4)]
print(lbp_wht.convert(model, rules))  # geometry (class token, patch grid) found by itself
print(lbp_wht.trainable_summary(model))
lbp = step(model.train())
for name, (m, ms) in (("plain backprop", plain), ("LBP-WHT LP_L1-4", lbp)):
    gflops, mb = m.backprop_flops / 1e9, m.saved_activation_bytes / 2**20
    print(f"{name:16s} backprop {gflops:8.3f} GFLOPs   saved {mb:7.2f} MiB   backward {ms:7.1f} ms")
print(f"measured backward speedup on this machine: {plain[1] / lbp[1]:.2f}x (batch {len(x)})")
