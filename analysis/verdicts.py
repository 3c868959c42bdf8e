"""The verdict rules: each claim of the paper (and a few beyond it) read against the numbers
of a run, with the thresholds that decide it.

An investigation, not part of the ``lbp_wht`` package. The reports that state verdicts import
it: the CPU demo (``analysis/mini_results.py``, ``results/mini/RESULTS.md``), the transfer run
(``analysis/transfer_results.py``, ``results/transfer/RESULTS.md``) and the gradient-fidelity
reading (``analysis/fidelity_readme.py``, ``results/fidelity/README.md``).

* :func:`claims`: the demo's claims, in its report's order (calibration, LBP-WHT vs LoRA-all,
  accuracy rising with r, LP_L1-8 vs Full BP in accuracy and cost, LP_L1-4's speedup, LoSA,
  Table 4), from any :class:`Stats` (accuracy mean / std / n and backprop MFLOPs per method);
* :func:`losa_claim`, :func:`bn_claim` (BatchNorm in train mode, the transfer run's),
  :func:`transfer_verdicts`;
* :func:`accuracy_reading`: does the mean ``g_w`` cosine order the demo's selections as their
  accuracy does?

A difference counts only when it exceeds two standard errors of the difference of the seed
means (:func:`noise`); "close" is :data:`CLOSE` points, "similar cost" :data:`SIMILAR_COST`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lbp_wht.experiments.vocab import method_label, method_spec
from lbp_wht.reporting.tables import cell_stat, cost_of, fidelity_summary, load_cost, load_runs

MODEL = "mini-efficientformer"
SCOPE = "partial"
#: The target task of the adaptation runs (``dataset_name`` of ``configs/mini/demo/target.py``).
DATASET = "fmnist-5to9"

HEAD = ("head_only", None, None)
FULL = ("full_bp", None, None)
LORA = ("lora", None, None)
LORA_ALL = ("lora_all", None, None)
LOSA = ("losa", None, None)
LINF3 = ("lbp_wht", "lp_linf", 3)
LHE10 = ("lbp_wht", "lhe", 10)
LP_RS = (2, 4, 6, 8)


def lp(r: int) -> tuple[str, str, int]:
    return ("lbp_wht", "lp_l1", r)


#: Thresholds of the verdicts (stated in RESULTS.md).
CLEAR_MARGIN = 3.0  # points: Full BP over head only for the task to tell methods apart
CLOSE = 1.0  # points: "LP_L1-8 close to Full BP"
SIMILAR_COST = 1.10  # "similar cost": at most 10% more backprop MFLOPs than LoRA-all


class Stats:
    """Accuracy (mean, std, n over seeds) and backprop MFLOPs per method key."""

    def __init__(self, runs_dir: Path, cost_dir: Path, dataset: str = DATASET) -> None:
        self.runs = load_runs([runs_dir])
        self.cost = load_cost(cost_dir)
        self.dataset = dataset

    def acc(self, key: tuple) -> tuple[float | None, float | None, int]:
        st = cell_stat(self.runs, MODEL, SCOPE, key, self.dataset)
        return st.mean, st.std, st.n

    def mflops(self, key: tuple) -> float | None:
        return cost_of(self.cost, MODEL, SCOPE, key)["mflops"]

    def has(self, key: tuple) -> bool:
        return self.acc(key)[2] > 0


def acc_text(st: tuple[float | None, float | None, int]) -> str:
    mean, std, n = st
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "") + f" (n={n})"


def _se(st: tuple[float | None, float | None, int]) -> float:
    """Standard error of a mean over seeds (0 with one seed: no noise estimate)."""
    mean, std, n = st
    return (std or 0.0) / math.sqrt(n) if n else 0.0


def noise(a: tuple, b: tuple) -> float:
    """Two standard errors of the difference of two means over seeds; infinite when either
    has a single seed (no noise estimate: no difference counts)."""
    if a[2] < 2 or b[2] < 2:
        return math.inf
    return 2.0 * math.sqrt(_se(a) ** 2 + _se(b) ** 2)


def se2_text(x: float) -> str:
    """A 2 SE figure for the text."""
    return "n/a, one seed" if math.isinf(x) else f"{x:.2f}"


def claims(s: Stats) -> list[dict[str, Any]]:
    """One dict per claim of the paper the demo can test, in the report's order: ``claim``
    (which one: the template ``mini_claims.j2`` words it), ``verdict`` (computed from the
    numbers with the thresholds above) and the numbers the evidence quotes."""
    out: list[dict[str, Any]] = []

    # 0. Calibration: can the task tell methods apart at all?
    full, head = s.acc(FULL), s.acc(HEAD)
    if full[0] is not None and head[0] is not None:
        d = full[0] - head[0]
        ok = d >= CLEAR_MARGIN and d > noise(full, head)
        out.append(
            dict(
                claim="calibration",
                verdict="holds" if ok else "does NOT hold",
                full=full,
                head=head,
                diff=d,
                margin=CLEAR_MARGIN,
            )
        )
    elif full[0] is not None:
        out.append(dict(claim="calibration_untested", verdict="not tested"))

    # 1. LBP-WHT vs LoRA-all at similar (or lower) cost.
    la, la_c = s.acc(LORA_ALL), s.mflops(LORA_ALL)
    cands = [
        (r, s.acc(lp(r)), s.mflops(lp(r)))
        for r in LP_RS
        if s.has(lp(r)) and s.mflops(lp(r)) is not None
    ]
    if la[0] is not None and la_c and cands:
        cheap = [(r, a, c) for r, a, c in cands if c <= SIMILAR_COST * la_c]
        better = [r for r, a, _ in cheap if a[0] - la[0] > noise(a, la)]
        worse = [r for r, a, _ in cheap if la[0] - a[0] > noise(a, la)]
        if not cheap:
            verdict = "not tested"
        elif better and not worse:
            verdict = "agrees"
        elif better:
            verdict = "partly agrees"
        elif worse and len(worse) == len(cheap):
            verdict = "does NOT agree"
        else:
            verdict = "inconclusive (within noise)" if not worse else "partly disagrees"
        out.append(
            dict(
                claim="lbp_vs_lora_all",
                verdict=verdict,
                similar_cost=SIMILAR_COST,
                lora_all=la,
                lora_all_mflops=la_c,
                rows=[
                    dict(r=r, acc=a, mflops=c, diff=a[0] - la[0], noise=noise(a, la))
                    for r, a, c in cheap
                ],
                better=better,
                worse=worse,
            )
        )

    # 2. Accuracy rises with r, with diminishing returns (Figures 3, 4).
    pts = [(r, s.acc(lp(r)), s.mflops(lp(r))) for r in LP_RS if s.has(lp(r))]
    if len(pts) >= 3:
        steps = []
        mono = True
        for (r0, a0, c0), (r1, a1, c1) in zip(pts, pts[1:]):
            g = a1[0] - a0[0]
            slope = (
                g / ((c1 - c0) / 1e3) if c0 is not None and c1 is not None and c1 != c0 else None
            )
            steps.append(dict(r0=r0, r1=r1, gain=g, slope=slope, noise=noise(a0, a1)))
            if g < -noise(a0, a1):
                mono = False
        diminishing = steps[0]["gain"] > steps[-1]["gain"]
        verdict = (
            "agrees"
            if mono and diminishing
            else ("partly agrees" if mono or diminishing else "does NOT agree")
        )
        out.append(
            dict(
                claim="rises_with_r",
                verdict=verdict,
                steps=steps,
                rising=mono,
                diminishing=diminishing,
            )
        )

    # 3. LP_L1-8 close to Full BP (accuracy), at ~80% of its computation (Sec. 4.2).
    p8 = s.acc(lp(8))
    if p8[0] is not None and full[0] is not None:
        d = p8[0] - full[0]
        ok = abs(d) <= CLOSE or d > 0
        out.append(
            dict(
                claim="lp8_accuracy",
                verdict="agrees" if ok else "does NOT agree",
                close=CLOSE,
                lp8=p8,
                full=full,
                diff=d,
            )
        )
        c8, cf = s.mflops(lp(8)), s.mflops(FULL)
        if c8 and cf:
            out.append(
                dict(
                    claim="lp8_cost",
                    verdict="agrees" if c8 / cf <= 0.9 else "does NOT agree",
                    lp8_mflops=c8,
                    full_mflops=cf,
                )
            )

    # 3b. LP_L1-4: a clear speedup over Full BP for about 1 point of accuracy (Sec. 4.2).
    p4, c4, cf = s.acc(lp(4)), s.mflops(lp(4)), s.mflops(FULL)
    if p4[0] is not None and full[0] is not None and c4 and cf:
        loss = full[0] - p4[0]
        faster, small = cf / c4 > 1.0, loss <= CLOSE
        out.append(
            dict(
                claim="lp4_speedup",
                verdict=(
                    "agrees"
                    if faster and small
                    else ("partly agrees" if faster else "does NOT agree")
                ),
                lp4=p4,
                lp4_mflops=c4,
                full=full,
                full_mflops=cf,
                diff=-loss,
            )
        )

    # 3c. Beyond the paper: LoSA (no backprop through the backbone) against LBP-WHT.
    c = losa_claim(s)
    if c is not None:
        out.append(c)

    # 4. Table 4: LP_L1-4 (R=10) vs LP_Linf-3 (R=9) vs LHE (R=10).
    a4, ainf, alhe = s.acc(lp(4)), s.acc(LINF3), s.acc(LHE10)
    if a4[0] is not None and ainf[0] is not None and alhe[0] is not None:
        d_inf, d_lhe = a4[0] - ainf[0], a4[0] - alhe[0]
        ok = d_inf >= -noise(a4, ainf) and d_lhe >= -noise(a4, alhe)
        out.append(
            dict(
                claim="table4",
                verdict="agrees" if ok else "does NOT agree",
                lp4=a4,
                linf3=ainf,
                lhe=alhe,
                diff_linf=d_inf,
                noise_linf=noise(a4, ainf),
                diff_lhe=d_lhe,
                noise_lhe=noise(a4, alhe),
            )
        )
    return out


def losa_claim(s: Stats) -> dict[str, Any] | None:
    """ "LoSA costs less backprop than LBP-WHT at matching accuracy" (not a paper claim; the
    LoSA paper's efficiency claim read against LBP-WHT), or None without LoSA or LP_L1 runs.

    For each LP_L1-r with records and a cost: the cost ratio and LoSA's accuracy difference.
    LoSA *matches* LP_L1-r when it is within :data:`CLOSE` points of it, above it, or not below
    it beyond noise (2 SE). Verdict: ``agrees`` when LoSA is cheaper than some LP_L1-r it
    matches (the evidence names the most accurate one); ``does NOT agree`` otherwise, saying
    whether LoSA was cheaper but less accurate than every rank, or not cheaper at all.
    """
    lo, lo_c = s.acc(LOSA), s.mflops(LOSA)
    rows = []
    for r in LP_RS:
        a, c = s.acc(lp(r)), s.mflops(lp(r))
        if a[0] is None or c is None or lo[0] is None or lo_c is None:
            continue
        d, nz = lo[0] - a[0], noise(lo, a)
        rows.append(
            dict(
                r=r,
                acc=a,
                mflops=c,
                ratio=c / lo_c,
                diff=d,
                noise=nz,
                matches=d >= -CLOSE or -d <= nz,
                cheaper=lo_c < c,
            )  # fmt: skip
        )
    if not rows:
        return None
    matched = [row["r"] for row in rows if row["matches"] and row["cheaper"]]
    cheaper_all = all(row["cheaper"] for row in rows)
    if matched:
        verdict, reason = "agrees", "matched"
    elif cheaper_all:
        verdict, reason = "does NOT agree", "less_accurate"
    else:
        verdict, reason = "does NOT agree", "not_cheaper"
    head = s.acc(HEAD)
    return dict(
        claim="losa_vs_lbp",
        verdict=verdict,
        reason=reason,
        close=CLOSE,
        losa=lo,
        losa_mflops=lo_c,
        rows=rows,
        best=max(matched) if matched else None,
        head=head if head[0] is not None else None,
        head_diff=lo[0] - head[0] if head[0] is not None else None,
        head_noise=noise(lo, head) if head[0] is not None else None,
    )


# --------------------------------------------------------------------- the transfer run
def _key(method: str, r: Any) -> tuple:
    r = None if r is None or (isinstance(r, float) and math.isnan(r)) else int(r)
    return (method, "lp_l1" if r else None, r)


class TransferStats(Stats):
    """Accuracy and backprop MFLOPs per method key, for one BatchNorm mode (``norm_eval``)."""

    def __init__(self, records: Sequence[dict], costs: Sequence[dict], norm_eval: bool = True):
        self.records = [r for r in records if bool(r["norm_eval"]) == norm_eval]
        self.costs = {c["tag"]: c for c in costs}
        self.norm_eval = norm_eval

    def _rows(self, key: tuple) -> list[dict]:
        return [r for r in self.records if _key(r["method"], r.get("r")) == key]

    def acc(self, key: tuple) -> tuple[float | None, float | None, int]:
        vals = [float(r["accuracy"]) for r in self._rows(key)]
        if not vals:
            return None, None, 0
        s = pd.Series(vals)
        return float(s.mean()), (float(s.std(ddof=1)) if len(vals) > 1 else None), len(vals)

    def mflops(self, key: tuple) -> float | None:
        rows = self._rows(key)
        cost = self.costs.get(rows[0]["tag"]) if rows else None
        return float(cost["mflops"]) if cost else None


def bn_claim(records: Sequence[dict], rs: Sequence[int] = (2, 4)) -> dict[str, Any] | None:
    """ "BatchNorm in train mode hurts LBP-WHT, not exact backprop": per LP_L1-r (and Full BP)
    the accuracy with BatchNorm on running statistics minus that in train mode, with 2 SE.
    ``agrees`` when every LP_L1-r drops beyond noise and by more than Full BP; ``partly agrees``
    when some do; ``does NOT agree`` otherwise. None without the train-mode runs."""
    ev, tr = TransferStats(records, [], True), TransferStats(records, [], False)
    rows = []
    for key in [("full_bp", None, None), *[("lbp_wht", "lp_l1", r) for r in rs]]:
        a, b = ev.acc(key), tr.acc(key)
        if a[0] is None or b[0] is None:
            continue
        rows.append(dict(key=key, label=method_label(key), eval=a, train=b, drop=a[0] - b[0],
                         noise=noise(a, b)))  # fmt: skip
    full = next((r for r in rows if method_spec(r["key"][0]).reference), None)
    lbp = [r for r in rows if method_spec(r["key"][0]).bases_only]
    if not lbp:
        return None
    hurt = [
        r["label"]
        for r in lbp
        if r["drop"] > r["noise"] and (full is None or r["drop"] > full["drop"])
    ]
    verdict = "agrees" if len(hurt) == len(lbp) else ("partly agrees" if hurt else "does NOT agree")
    return dict(claim="bn_train", verdict=verdict, rows=rows, hurt=hurt, full=full)


def transfer_verdicts(records: Sequence[dict], costs: Sequence[dict]) -> list[dict[str, Any]]:
    """The demo's claims on the BatchNorm-eval rows, then the BatchNorm claim."""
    out = claims(TransferStats(records, costs, True))
    bn = bn_claim(records)
    return out + ([bn] if bn else [])


# ------------------------------------------------------------------ gradient fidelity
#: The demo's LBP-WHT rows (mini Tables 2 and 4) as (selection label, method key).
DEMO_SELECTIONS = (
    ("LP_L1-2", ("lbp_wht", "lp_l1", 2)),
    ("LP_L1-4", ("lbp_wht", "lp_l1", 4)),
    ("LP_L1-6", ("lbp_wht", "lp_l1", 6)),
    ("LP_L1-8", ("lbp_wht", "lp_l1", 8)),
    ("LP_Linf-3", ("lbp_wht", "lp_linf", 3)),
    ("LHE-10", ("lbp_wht", "lhe", 10)),
)
#: Spearman rank correlation from which fidelity "orders the selections as accuracy does".
STRONG = 0.8


def accuracy_reading(df: pd.DataFrame, mini_dir: Path | None) -> dict[str, Any] | None:
    """Mean ``g_w`` cosine (reflect, the training setting) of the demo's LBP-WHT selections
    against their accuracy in the CPU demo (``mini_dir``: ``results/mini``), per state: the
    Spearman rank correlation over the selections, and the verdict ``agrees`` (every state at
    least :data:`STRONG`), ``partly`` (some state) or ``does NOT agree``. None without the
    demo's records."""
    if mini_dir is None or not (mini_dir / "runs" / "adapt").is_dir():
        return None
    stats = Stats(mini_dir / "runs" / "adapt", mini_dir / "cost")
    s = fidelity_summary(df)
    s = s[s["padding"] == "reflect"]
    rows = []
    for label, key in DEMO_SELECTIONS:
        mean, std, n = stats.acc(key)
        if mean is None:
            continue
        row: dict[str, Any] = dict(selection=label, acc=mean, acc_std=std, n=n)
        for state in dict.fromkeys(s["state"]):
            hit = s[(s["state"] == state) & (s["selection"] == label)]
            row[state] = float(hit["cos_gw"].iloc[0]) if not hit.empty else math.nan
        rows.append(row)
    if len(rows) < 3:
        return None
    t = pd.DataFrame(rows)
    states = [c for c in t.columns if c not in ("selection", "acc", "acc_std", "n")]
    rho = {st: float(t["acc"].corr(t[st], method="spearman")) for st in states}
    strong = [st for st, r in rho.items() if r >= STRONG]
    verdict = (
        "agrees" if len(strong) == len(rho) else ("partly agrees" if strong else "does NOT agree")
    )
    return dict(rows=rows, states=states, rho=rho, verdict=verdict, strong=STRONG)
