# Method block (lbp_wht/integrations/build.py LBP_DEFAULTS lists every key). Experiments set
# lbp.model and lbp.scope; sweeps change e.g. lbp.r / lbp.select with --cfg-options.
lbp = dict(
    method="lbp_wht+lora_all",
    select="lp_l1",
    r=4,
    order=8,
    padding="reflect",
    scope="partial",
    lora_rank=8,
    lora_alpha=8,
)
