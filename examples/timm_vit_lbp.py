"""Adapt a timm ViT-S/16 with LBP-WHT (LP_L1-4) and print what one training step costs.

python examples/timm_vit_lbp.py            # ImageNet weights, 224 px (downloads once)
LBP_EXAMPLE_SMOKE=1 python examples/timm_vit_lbp.py   # random init, 64 px (CI)
"""

import lbp_wht  # before timm: on CPU-only machines it makes torchvision importable

# isort: split
import os

import timm
import torch

smoke = bool(os.environ.get("LBP_EXAMPLE_SMOKE"))
size = 64 if smoke else 224
model = timm.create_model(
    "vit_small_patch16_224", pretrained=not smoke, num_classes=10, img_size=size
)
x = torch.randn(2 if smoke else 8, 3, size, size)
lbp_wht.freeze(model, ["blocks.*", "head.*"])  # what trains: the blocks and the new head
plain = lbp_wht.measure_step(model.train(), x)

rules = [dict(target="all-linear", method="lbp", selection="lp_l1", radius=4)]
print(lbp_wht.convert(model, rules))  # geometry (class token, patch grid) found by itself
print(lbp_wht.trainable_summary(model))
lbp = lbp_wht.measure_step(model.train(), x)

for name, m in (("plain backprop", plain), ("LBP-WHT LP_L1-4", lbp)):
    gflops, mb = m.backprop_flops / 1e9, m.saved_activation_bytes / 2**20
    print(f"{name:16s} backprop {gflops:8.3f} GFLOPs   saved activations {mb:8.2f} MiB")
# Train as usual; then keep it (trainable tensors + rules) or go back to plain layers:
# lbp_wht.save_adapted(model, "vit_lbp.pt"); lbp_wht.unconvert(model)
