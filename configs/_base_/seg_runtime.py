# Runtime shared by the segmentation experiments (mmseg), see default_runtime.py.
default_scope = "mmseg"
runner_type = "LBPWHTRunner"
custom_imports = dict(
    imports=["lbp_wht.integrations", "lbp_wht.integrations.models", "lbp_wht.integrations.runner"],
    allow_failed_imports=False,
)

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(
        type="CheckpointHook", by_epoch=False, interval=2000, max_keep_ckpts=1, save_last=True
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
# Also added by LBPWHTRunner; listed here so that a plain mmengine Runner (which would build the
# model without the method) stops with a clear error in LBPWHTHook instead of training plain.
custom_hooks = [dict(type="LBPWHTHook"), dict(type="RunRecordHook")]
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
resume = False
randomness = dict(seed=0, deterministic=False)
