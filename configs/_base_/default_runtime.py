# Runtime shared by the classification experiments (mmpretrain). The `lbp` block of the
# experiment decides the method; LBPWHTRunner injects it at model-build time (before DDP and
# the optimizer; see lbp_wht/integrations/build.py).
default_scope = "mmpretrain"
runner_type = "LBPWHTRunner"
# 'lbp_wht.integrations' applies the CPU shims before mmpretrain / mmseg / timm import;
# '.models' registers the timm EfficientFormerV2 backbone and the Segformer attention rewrite;
# '.runner' registers LBPWHTRunner, the LBPWHTModel builder, the hooks and the datasets.
custom_imports = dict(
    imports=["lbp_wht.integrations", "lbp_wht.integrations.models", "lbp_wht.integrations.runner"],
    allow_failed_imports=False,
)

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=100),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=10, max_keep_ckpts=1, save_last=True),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="VisualizationHook", enable=False),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
# Also added by LBPWHTRunner; listed here so that a plain mmengine Runner (which would build the
# model without the method) stops with a clear error in LBPWHTHook instead of training plain.
custom_hooks = [dict(type="LBPWHTHook"), dict(type="RunRecordHook")]
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="UniversalVisualizer", vis_backends=vis_backends)
log_level = "INFO"
resume = False
randomness = dict(seed=0, deterministic=False)
