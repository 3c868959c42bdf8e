"""Check experiment configs: parse, build with the method injected, one forward/backward
(``lbp_wht.integrations.config_check``).

    python tools/check_configs.py                       # every config under configs/ (slow on CPU)
    python tools/check_configs.py --filter table4 mini  # configs whose path contains any word
    python tools/check_configs.py --representative      # every model x method x scope once
    python tools/check_configs.py CONFIG [CONFIG ...]   # these files

For each config: ``Config.fromfile`` (custom imports, ``_base_`` merge), ``inject_lbp``, build
the model exactly as the Runner would (``LBPWHTModel``: convert + freeze + norm_eval), run one
training forward/backward on random input at the config's resolution, and check that

* exactly the trainable parameters receive gradients (a trainable parameter without a
  gradient would also break DDP without ``find_unused_parameters``), and
* the converted modules are exactly the ``nn.Linear`` / 1x1 ``nn.Conv2d`` that the preset's
  rules target.

It prints, per config, what was converted and what trains; the exit status is non-zero if any
config fails. ``--json FILE`` writes the per-config results.
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from dataclasses import asdict
from pathlib import Path

import lbp_wht.integrations  # noqa: F401  (CPU shims first)
from lbp_wht.experiments.catalog import REPO_ROOT
from lbp_wht.integrations.config_check import all_configs, check_config, representative


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("configs", nargs="*", help="config files (default: all under configs/)")
    p.add_argument("--filter", nargs="+", default=None, help="keep paths containing any word")
    p.add_argument("--representative", action="store_true", help="a covering subset")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--json", default=None, help="write per-config results here")
    p.add_argument("--list", action="store_true", help="only list the selected configs")
    p.add_argument("--verbose", action="store_true", help="print tracebacks")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [Path(c).resolve() for c in args.configs] or all_configs()
    if args.filter:
        configs = [c for c in configs if any(w in str(c) for w in args.filter)]
    if args.representative:
        configs = representative(configs)
    if args.list:
        print("\n".join(osp.relpath(c, REPO_ROOT) for c in configs))
        return 0
    results = []
    for c in configs:
        res = check_config(str(c), batch=args.batch, verbose=args.verbose)
        res.config = osp.relpath(c, REPO_ROOT)
        print(res.summary(), flush=True)
        results.append(res)
    n_bad = sum(not r.ok for r in results)
    print(f"\n{len(results) - n_bad}/{len(results)} configs OK")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
