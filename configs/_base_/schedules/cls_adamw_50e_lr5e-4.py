# The classification schedule (cls_adamw_50e.py) at lr 5e-4 (Stanford Cars, the authors' config).
_base_ = ["cls_adamw_50e.py"]
optim_wrapper = dict(optimizer=dict(lr=5e-4))
