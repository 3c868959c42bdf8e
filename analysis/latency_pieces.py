"""Time the pieces of one LBP-WHT backward alone: Swin-T stage-1 fc1 at LP_L1-2, batch 64.

The projection of ``g_y`` (with the bias sum), the two low-rank GEMMs and the reverse
projection into ``g_x``, each called as the backward calls it, interleaved, fastest of 15
rounds (2 threads, the latency tool's ``reuse`` allocator). Their sum against 60% of Table 1's
FLOP bound is what ``results/latency/README.md`` discusses. Run::

    python analysis/latency_pieces.py
"""

from __future__ import annotations

import time

import torch

from lbp_wht import WHTProjector, select_bases
from lbp_wht.benchmark.timing import configure_allocator


def main() -> None:
    torch.set_num_threads(2)
    configure_allocator("reuse")
    b, hw, cx, cy = 64, 56, 96, 384
    p = WHTProjector((hw, hw), select_bases("lp_l1", 2))
    g, w = torch.randn(b, hw * hw, cy), torch.randn(cy, cx)
    g_hat, x_hat = torch.randn(b * p.low_rank_tokens, cy), torch.randn(b * p.low_rank_tokens, cx)
    z, g_x = torch.randn(b, p.low_rank_tokens, cx), torch.empty(b, hw * hw, cx)
    pieces = {
        "projection of g_y (308 MB) with the bias sum": lambda: p.project(
            g, grad=True, bias_sum=True
        ),
        "two low-rank GEMMs": lambda: (torch.mm(g_hat.t(), x_hat), torch.mm(g_hat, w)),
        "reverse projection into g_x (77 MB)": lambda: p.project_back(z, out=g_x),
    }
    times: dict[str, list[float]] = {k: [] for k in pieces}
    for _ in range(17):
        for name, fn in pieces.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v[2:]) * 1e3 for k, v in times.items()}  # two warm-up rounds dropped
    for k, v in best.items():
        print(f"{k}: {v:.1f} ms")
    print(f"sum: {sum(best.values()):.1f} ms")


if __name__ == "__main__":
    main()
