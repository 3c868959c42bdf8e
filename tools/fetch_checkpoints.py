"""Download (and where needed convert) the pretrained checkpoints the paper's configs load.

    python tools/fetch_checkpoints.py --list
    python tools/fetch_checkpoints.py efficientformer-l1 swinv2-small-w8   # or: all
    python tools/fetch_checkpoints.py all --dir checkpoints --verify

Sources, file names and the conversion of timm weights: ``lbp_wht/experiments/pretrained.py``.
Files go to ``checkpoints/`` (the configs' ``load_from``; ``--dir`` or env ``CKPT_DIR``
elsewhere). ``--verify`` builds each config's model and checks that the file's keys match it
(no missing backbone weights). This needs the network; without it, the error names the URL to
download elsewhere and where to put the file. It is never run by the tests.
"""

from __future__ import annotations

import argparse
import os
import sys

import lbp_wht.integrations  # noqa: F401  (CPU shims first)
from lbp_wht.experiments.catalog import REPO_ROOT
from lbp_wht.experiments.models import MODEL_SPECS
from lbp_wht.experiments.pretrained import FetchError, fetch, verify


def main(argv: list[str] | None = None) -> int:
    known = {m.id: m.checkpoint for m in MODEL_SPECS.values() if m.checkpoint is not None}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", help=f"'all' or some of {sorted(known)}")
    default_dir = os.environ.get("CKPT_DIR") or str(REPO_ROOT / "checkpoints")
    p.add_argument("--dir", default=default_dir, help="where to put the files (env CKPT_DIR)")
    p.add_argument("--force", action="store_true", help="download again")
    p.add_argument("--verify", action="store_true", help="check the keys against the model")
    p.add_argument("--list", action="store_true", help="print what is known and exit")
    args = p.parse_args(argv)
    if args.list or not args.names:
        for k, v in known.items():
            print(f"{k:22s} {v.file}\n{'':22s} <- {v.source}")
        return 0
    names = sorted(known) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown checkpoint(s) {unknown}; known: {sorted(known)}")
    ok = True
    for n in names:
        try:
            path = fetch(n, args.dir, args.force)
        except FetchError as err:
            print(f"fetch_checkpoints: error: {err}", file=sys.stderr)
            ok = False
            continue
        if args.verify:
            diff = verify(n, path)
            print(
                f"{n}: {'OK' if diff['ok'] else 'MISMATCH'} missing={diff['missing'][:5]} "
                f"mismatched={diff['mismatched'][:5]} unexpected={diff['unexpected'][:5]} "
                f"re-initialised={len(diff['reinit'])}"
            )
            ok &= diff["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
