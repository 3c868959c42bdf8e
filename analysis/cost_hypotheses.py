"""The accounting hypotheses: cost-record variants that test why our backprop FLOPs differ from
the paper's (``results/cost/hypotheses*.csv``).

An investigation of ``results/cost/`` (the tables of ``tools/make_cost_tables.py``), not part of
the package: each hypothesis is a variant of a table row's config measured like the rows
themselves (:meth:`lbp_wht.reporting.cost_tables.CostTables.record`, one JSON record per variant
in ``results/cost/records/``, reused on a rerun). ``analysis/cost_agreement.py`` runs it, reads
the files back, explains every printed cell and writes ``results/cost/README.md``.

* ``hypotheses.csv`` / ``hypotheses_summary.csv``: every accounting hypothesis (H0-H7) row by
  row on Table 7 (EfficientFormer-L1 partial training, all cost cells readable);
* ``hypotheses_full_bp.csv``: H3 (the stage input's ``g_x``) on every model's partial Full BP;
* ``hypotheses_lora_all.csv``: H4 (the authors' LoRA-all freeze) on the LoRA-all rows of Tables
  2 and 5;
* ``hypotheses_segmentation.csv``: Table 3 halved, at half the crop, under other freezes;
* ``hypotheses_efficientformerv2.csv``: V2-DS and V2-FFN on the EfficientFormerV2 rows.
"""

from __future__ import annotations

from typing import Any

from lbp_wht.experiments.vocab import MODEL_SPECS, method_spec, method_with
from lbp_wht.reporting.cost_tables import (
    ROW_FIELDS,
    SPEEDUP_TOLERANCE,
    CostTables,
    authors_options,
    rint,
    row_id,
    row_label,
    to_mflops,
)
from lbp_wht.reporting.render import as_number, write_rows_csv

#: The two LoRA baselines the hypotheses are about, by their flags (experiments/methods.py):
#: LoRA on the attention projections, LoRA on every layer LBP-WHT converts.
LORA = method_with(lora_only=True, layers="attn")
LORA_ALL = method_with(lora_only=True, layers="all")

#: The paper's LoRA-all freeze in its partial-training configs (``lora_layer4``): the whole last
#: stage and the head train beside the adapters.
AUTHORS_FREEZE_LORA_ALL = ["backbone.network.3.*", "head.*"]

#: The accounting hypotheses tested on Table 7 (``hypotheses.csv``).
ACCOUNTING = {
    "H0": "ours: backward + forward-for-backward, matmul/conv FLOPs only",
    "H1": "H0 + elementwise estimate (perf counts every FP instruction)",
    "H2": "H0 with projections counted as in Table 1 (1 FLOP per element and basis)",
    "H3": "H0 + g_x at the stage input (every layer with trainable weights back-propagates "
    "to its input, incl. the frozen-input 3x3 downsampling conv)",
    "H4": "H0, LoRA-all with the authors' freeze (all non-LoRA params of network.3 train, "
    "as in their lora_layer4 configs)",
    "H5": "H3 and H4 together",
    "H6": "H0 + forward of the trained stage and head (fwd+bwd of the trained part)",
    "H7": "H0 x 64 (per batch of 64 instead of per image)",
}


#: Columns of ``hypotheses_efficientformerv2.csv``: MFLOPs per hypothesis, its ratio to the
#: paper's MFLOPs, its speedup and that speedup's ratio to the paper's.
HYPOTHESES_V2_FIELDS = [
    *ROW_FIELDS,
    "paper_mflops",
    "paper_speedup",
    *(
        f"{k}{suffix}"
        for k in ("corrected", "authors", "V2-DS", "V2-FFN")
        for suffix in ("", "_ratio", "_speedup", "_speedup_ratio")
    ),
]

#: Columns of ``hypotheses_segmentation.csv`` (MFLOPs and their ratio to the paper's).
HYPOTHESES_SEG_FIELDS = [
    "scope",
    "method",
    "label",
    "r",
    "paper_mflops",
    *(
        f"{prefix}{k}"
        for k in (
            "512x512",
            "256x512",
            "authors_512x512",
            "authors_half",
            "authors_256x512",
            "authors_scope_half",
            "authors_decoder_half",
        )
        for prefix in ("" if k.startswith("authors") else "ours_", "ratio_")
    ),
    "paper_speedup",
    "ours_speedup_512x512",
    "ours_speedup_256x512",
]


class CostHypotheses(CostTables):
    """:class:`CostTables` that also measures the hypotheses' variants."""

    def hypotheses(self) -> None:
        """Accounting hypotheses (why ours differ from the paper's), written to
        ``hypotheses.csv`` / ``hypotheses_summary.csv`` (Table 7, every hypothesis),
        ``hypotheses_full_bp.csv`` (H3 on every model's partial Full BP),
        ``hypotheses_lora_all.csv`` (H4 on every LoRA-all row of Tables 2 and 5) and
        ``hypotheses_segmentation.csv`` (Table 3 at half the crop)."""
        rows, summary = self._hypotheses_table7()
        write_rows_csv(self.out / "hypotheses.csv", rows)
        write_rows_csv(self.out / "hypotheses_summary.csv", summary)
        write_rows_csv(self.out / "hypotheses_full_bp.csv", self._hypothesis_stage_input())
        write_rows_csv(self.out / "hypotheses_lora_all.csv", self._hypothesis_lora_all())
        write_rows_csv(
            self.out / "hypotheses_segmentation.csv",
            self._hypothesis_half_crop(),
            HYPOTHESES_SEG_FIELDS,
        )
        write_rows_csv(
            self.out / "hypotheses_efficientformerv2.csv",
            self._hypothesis_efficientformerv2(),
            HYPOTHESES_V2_FIELDS,
        )

    def _hypotheses_table7(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every hypothesis row by row against Table 7's MFLOPs and speedups
        (EfficientFormer-L1 partial training, the only table whose every cost cell is
        readable for one model)."""
        out = []
        for pr in self.paper_rows("classification.csv", 7):
            method, r = pr["method"], rint(pr.get("r"))
            cfg = self.find_config(7, pr["model"], pr["scope"], method, r, "places365")
            base = self.record(cfg)
            ig = self.record(cfg, tag="input-grad", input_grad=True)
            if method == LORA_ALL:
                af = self.record(cfg, tag="authors-freeze", trainable=AUTHORS_FREEZE_LORA_ALL)
                afig = self.record(
                    cfg,
                    tag="authors-freeze+input-grad",
                    trainable=AUTHORS_FREEZE_LORA_ALL,
                    input_grad=True,
                )
            else:
                af, afig = base, ig
            h0 = base["backprop_flops"]
            ew = base["backward_elementwise"] + (
                base["forward_elementwise"] - base["forward_nograd_elementwise"]
            )
            t1_delta = base["linear_layers_analytic_gemm"] - base["linear_layers_analytic_table1"]
            mods = base.get("module_flops", {})
            trained_fwd = sum(
                mods.get(n, {}).get("fwd_nograd", 0.0)
                for n in ("backbone.network.3", "neck", "head")
            )
            vals = dict(
                H0=h0,
                H1=h0 + ew,
                H2=h0 - t1_delta,
                H3=ig["backprop_flops"],
                H4=af["backprop_flops"],
                H5=afig["backprop_flops"],
                H6=h0 + trained_fwd,
                H7=h0 * 64,
            )
            row = dict(
                model=pr["model"],
                scope=pr["scope"],
                method=method,
                label=row_label(method, r),
                r=r,
                paper_mflops=as_number(pr["mflops"]),
                paper_speedup=as_number(pr["speedup"]),
            )
            row.update({k: to_mflops(v) for k, v in vals.items()})
            out.append(row)
        full = next(o for o in out if method_spec(o["method"]).reference)
        for o in out:
            for k in ACCOUNTING:
                o[f"{k}_ratio"] = round(o[k] / o["paper_mflops"], 3)
                o[f"{k}_speedup"] = round(full[k] / o[k], 3)
        summary = []
        for k, desc in ACCOUNTING.items():
            errs = [abs(o[f"{k}_ratio"] - 1) for o in out]
            sp_errs = [abs(o[f"{k}_speedup"] / o["paper_speedup"] - 1) for o in out]
            summary.append(
                dict(
                    hypothesis=k,
                    description=desc,
                    mean_abs_mflops_error_pct=round(100 * sum(errs) / len(errs), 1),
                    max_abs_mflops_error_pct=round(100 * max(errs), 1),
                    mean_abs_speedup_error_pct=round(100 * sum(sp_errs) / len(sp_errs), 1),
                    max_abs_speedup_error_pct=round(100 * max(sp_errs), 1),
                    rows_speedup_off_10pct=sum(e > SPEEDUP_TOLERANCE for e in sp_errs),
                )
            )
        return out, summary

    def _hypothesis_stage_input(self) -> list[dict[str, Any]]:
        """H3 (the gradient of the stage input) on every model's partial Full BP (Table 2)."""
        t2 = self.paper_rows("classification.csv", 2)
        fb = []
        cls_models = [m.id for m in MODEL_SPECS.values() if m.paper and m.task == "cls"]
        for model in cls_models:
            rows = [r for r in t2 if r["model"] == model and r["scope"] == "partial"]
            if not rows:
                continue
            cfg = self.find_config(2, model, "partial", "full_bp", None, "cifar100")
            base = self.record(cfg)
            ig = self.record(cfg, tag="input-grad", input_grad=True)
            paper_full = next(
                (as_number(r["mflops"]) for r in rows if method_spec(r["method"]).reference), None
            )
            src = "paper"
            if paper_full is None:  # unreadable cell: paper MFLOPs x paper speedup of the rest
                derived = [
                    as_number(r["mflops"]) * as_number(r["speedup"])
                    for r in rows
                    if as_number(r["mflops"]) and as_number(r["speedup"])
                ]
                paper_full = sum(derived) / len(derived) if derived else None
                src = f"mean of MFLOPs x speedup over {len(derived)} rows"

            def ratio(v: float, paper_full: float | None = paper_full) -> float | None:
                return round(v / 1e6 / paper_full, 3) if paper_full else None

            fb.append(
                dict(
                    model=model,
                    paper_full_bp_mflops=round(paper_full, 2) if paper_full else None,
                    paper_source=src,
                    H0=to_mflops(base["backprop_flops"]),
                    H0_ratio=ratio(base["backprop_flops"]),
                    H3=to_mflops(ig["backprop_flops"]),
                    H3_ratio=ratio(ig["backprop_flops"]),
                    stage_input_gx=to_mflops(ig["backprop_flops"] - base["backprop_flops"]),
                    elementwise_estimate=to_mflops(base["backward_elementwise"]),
                )
            )
        return fb

    def _hypothesis_lora_all(self) -> list[dict[str, Any]]:
        """H4 on every LoRA-all row of Tables 2 and 5: the authors' freeze configs keep every
        non-LoRA parameter of the trained scope trainable (partial: the last stage; full
        training: ``freeze_layers = ['~backbone.lora']``, nothing frozen but the LoRA
        bases)."""
        from lbp_wht.experiments.presets import get_preset

        cls = self.paper_rows("classification.csv")
        la, seen = [], set()
        for pr in cls:
            if pr["method"] != LORA_ALL or pr["table"] not in ("2", "5"):
                continue
            key = (pr["model"], pr["scope"])
            if key in seen:
                continue
            seen.add(key)
            model, scope = key
            table = int(pr["table"])
            full_rec = self.record(
                self.find_config(table, model, scope, "full_bp", None, "cifar100")
            )
            cfg = self.find_config(table, model, scope, "lora_all", None, "cifar100")
            base = self.record(cfg)
            trainable = get_preset(model, "full_bp", scope).trainable
            af = self.record(cfg, tag="authors-freeze", trainable=trainable)
            paper_full = next(
                (
                    as_number(r["mflops"])
                    for r in cls
                    if r["table"] == pr["table"]
                    and r["model"] == model
                    and r["scope"] == scope
                    and method_spec(r["method"]).reference
                ),
                None,
            )
            p_mf, p_sp = as_number(pr["mflops"]), as_number(pr["speedup"])
            if p_sp is None and p_mf and paper_full:
                p_sp = paper_full / p_mf
            fb_ours = full_rec["backprop_flops"]
            la.append(
                dict(
                    table=table,
                    model=model,
                    scope=scope,
                    paper_mflops=p_mf,
                    paper_speedup=round(p_sp, 3) if p_sp else None,
                    ours_mflops=to_mflops(base["backprop_flops"]),
                    ours_speedup=round(fb_ours / base["backprop_flops"], 3),
                    authors_freeze_mflops=to_mflops(af["backprop_flops"]),
                    authors_freeze_speedup=round(fb_ours / af["backprop_flops"], 3),
                    authors_freeze_trainable=" ".join(trainable),
                    ours_trainable_params=base["trainable_params"],
                    authors_freeze_trainable_params=af["trainable_params"],
                )
            )
        return la

    def _hypothesis_half_crop(self) -> list[dict[str, Any]]:
        """Table 3: our figures are about twice the paper's. Per row: both variants at the
        configs' 512x512 crop, our count halved (a uniform factor 1/2), and a half-size crop
        (256 x 512 pixels); LoRA rows also with the authors' variant trained under
        ``lora_train='scope'`` and under the authors' plain-LoRA freeze transferred to
        Segformer (adapters + everything outside the backbone: the whole decode head)."""
        sg = []
        fulls: dict[str, dict[str, float]] = {}
        for pr in self.paper_rows("segmentation.csv", 3):
            method, r, scope = pr["method"], rint(pr.get("r")), pr["scope"]
            cfg = self.find_config(3, pr["model"], scope, method, r, "cityscapes")
            base = self.record(cfg)
            half = self.record(cfg, tag="crop-256x512", size=(256, 512))
            auth = self.authors_record(cfg, method, base)
            auth_cfg = (cfg[0], {**cfg[1], **authors_options(method)})
            auth_half = self.record(auth_cfg, tag="crop-256x512", size=(256, 512))
            p_mf = as_number(pr["mflops"])
            vals = dict(
                ours_512x512=base["backprop_flops"],
                ours_256x512=half["backprop_flops"],
                authors_512x512=auth["backprop_flops"],
                authors_half=auth["backprop_flops"] / 2,
                authors_256x512=auth_half["backprop_flops"],
            )
            if method == LORA:
                scope_cfg = (cfg[0], {**auth_cfg[1], "lbp.lora_train": "scope"})
                vals["authors_scope_half"] = self.record(scope_cfg)["backprop_flops"] / 2
                prefix = "backbone.layers.3.1.*." if scope == "partial" else "backbone.*."
                dec = self.record(
                    auth_cfg, tag="decoder-trains", trainable=[prefix + "lora_*", "decode_head.*"]
                )
                vals["authors_decoder_half"] = dec["backprop_flops"] / 2
            if method_spec(method).reference:
                fulls[scope] = dict(vals, paper=p_mf)
            row: dict[str, Any] = dict(
                scope=scope,
                method=method,
                label=row_label(method, r),
                r=r,
                paper_mflops=p_mf,
            )
            for k, v in vals.items():
                row[k] = to_mflops(v)
                row[f"ratio_{k.removeprefix('ours_')}"] = round(v / 1e6 / p_mf, 3)
            sg.append(row)
        for row in sg:
            f = fulls[row["scope"]]
            row["paper_speedup"] = round(f["paper"] / row["paper_mflops"], 3)
            row["ours_speedup_512x512"] = round(f["ours_512x512"] / 1e6 / row["ours_512x512"], 3)
            row["ours_speedup_256x512"] = round(f["ours_256x512"] / 1e6 / row["ours_256x512"], 3)
        return sg

    def _hypothesis_efficientformerv2(self) -> list[dict[str, Any]]:
        """EfficientFormerV2 (Tables 2, 5): every printed row in both variants and under

        * ``V2-DS`` (partial training): the attention-downsampling block into the last stage
          (the authors' ``network.5``, timm ``stages.3.downsample``) trains too, its q / k / v
          / proj converted as in full training (authors' variant);
        * ``V2-FFN`` (LBP-WHT rows): only the FFN 1x1 convs converted, the attention layers
          left plain, as a bypassed wrapper would leave them (authors' variant).
        """
        from lbp_wht.config import LBPConfig
        from lbp_wht.experiments.presets import get_preset

        out = []
        for pr in self.paper_rows("classification.csv"):
            if (
                pr["model"] not in MODEL_SPECS
                or MODEL_SPECS[pr["model"]].arch != "EfficientFormerV2"
            ):
                continue
            if pr["table"] not in ("2", "5"):
                continue
            table, model, scope, method = int(pr["table"]), pr["model"], pr["scope"], pr["method"]
            r = rint(pr.get("r"))
            if not (as_number(pr["mflops"]) or as_number(pr["speedup"])):
                continue
            cfg = self.find_config(table, model, scope, method, r, "cifar100")
            auth_cfg = (cfg[0], {**cfg[1], **authors_options(method)})
            row: dict[str, Any] = dict(
                row_id(table, model, scope, method, r),
                paper_mflops=as_number(pr["mflops"]),
                paper_speedup=as_number(pr["speedup"]),
                corrected=to_mflops(self.record(cfg)["backprop_flops"]),
                authors=to_mflops(
                    self.authors_record(cfg, method, self.record(cfg))["backprop_flops"]
                ),
            )
            if scope == "partial":
                kw: dict[str, Any] = {"lbp": LBPConfig(radius=r), "variant": "authors"}
                if method == LORA_ALL:
                    kw["lora_train"] = "scope"
                preset = get_preset(model, method, "full", **kw)
                rules = [
                    dict(rule, target=rule["target"].replace("stages.*.", "stages.3."))
                    for rule in preset.rules
                    if ".downsample." in rule["target"]
                ]
                part = get_preset(model, method, "partial", **kw).trainable
                if method_spec(method).trains == "scope" or kw.get("lora_train") == "scope":
                    trainable = ["backbone.timm_model.stages.3.*", "head.*"]
                else:
                    trainable = list(part)
                trainable += [f"{rule['target']}.lora_{ab}" for rule in rules
                              if rule["method"] != "lbp" for ab in ("A", "B")]  # fmt: skip
                rec = self.record(
                    auth_cfg, tag="v2-ds", extra_rules=rules or None, trainable=trainable
                )
                row["V2-DS"] = to_mflops(rec["backprop_flops"])
            if method_spec(method).bases_only:
                rules = [
                    rule
                    for rule in get_preset(
                        model, method, scope, lbp=LBPConfig(radius=r), variant="authors"
                    ).rules
                    if ".mlp." in rule["target"]
                ]
                plain = (cfg[0], {**auth_cfg[1], "lbp.method": "full_bp"})
                row["V2-FFN"] = to_mflops(self.record(plain, tag="v2-ffn", extra_rules=rules)
                                    ["backprop_flops"])  # fmt: skip
            out.append(row)
        for row in out:
            full = next(
                o for o in out
                if (o["table"], o["model"], o["scope"], o["method"])
                == (row["table"], row["model"], row["scope"], method_with(reference=True))
            )  # fmt: skip
            for k in ("corrected", "authors", "V2-DS", "V2-FFN"):
                if row.get(k) is None:
                    continue
                fk = full.get(k if k != "V2-FFN" else "authors")
                if row["paper_mflops"]:
                    row[f"{k}_ratio"] = round(row[k] / row["paper_mflops"], 3)
                if fk:
                    row[f"{k}_speedup"] = round(fk / row[k], 3)
                    if row["paper_speedup"]:
                        row[f"{k}_speedup_ratio"] = round(fk / row[k] / row["paper_speedup"], 3)
        return out

    # ----------------------------------------------------------------------------- a run
