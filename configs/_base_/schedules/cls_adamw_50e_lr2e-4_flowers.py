# Flowers102 (the authors' config): lr 2e-4, warm-up over 100 iterations (the training set is
# small), cosine down to 0.001x; otherwise cls_adamw_50e.py.
_base_ = ["cls_adamw_50e_lr2e-4.py"]
param_scheduler = [
    dict(_base_.param_scheduler[0], end=100),
    dict(_base_.param_scheduler[1], eta_min_ratio=1e-3),
]
