# The settings of the `lbp` block that every method shares (every key, with its default, is in
# lbp_wht/integrations/build.py: LBP_DEFAULTS). Each experiment config sets what selects its
# method: lbp.method, lbp.model, lbp.scope and, for LBP-WHT, lbp.select with lbp.r (LP_L1 /
# LP_Linf) or lbp.rank (LHE). Sweeps change them with --cfg-options.
lbp = dict(order=8, padding="reflect", lora_rank=8, lora_alpha=8)
