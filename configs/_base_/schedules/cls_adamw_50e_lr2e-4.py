# The classification schedule (cls_adamw_50e.py) at lr 2e-4 (Food-101, the authors' config).
_base_ = ["cls_adamw_50e.py"]
optim_wrapper = dict(optimizer=dict(lr=2e-4))
