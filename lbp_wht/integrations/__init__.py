"""OpenMMLab / timm integration layer (the only part of lbp_wht that knows about them).

Importing this package applies the CPU compatibility shims of :mod:`.compat` and nothing else,
so it stays light (torch + stdlib) and is safe as the first entry of an OpenMMLab config's
``custom_imports``::

    custom_imports = dict(
        imports=["lbp_wht.integrations", "lbp_wht.integrations.models"],
        allow_failed_imports=False,
    )

``custom_imports`` runs inside ``Config.fromfile``, i.e. before mmpretrain / mmseg / timm import
torchvision, so the shims are in force in time. The second entry registers this project's
model wrappers (timm EfficientFormerV2 backbone, explicit-projection Segformer attention) and
imports mmpretrain / mmseg, which is why it is a separate module. ``import lbp_wht`` alone
applies nothing (:mod:`.envhook` covers ``import lbp_wht, timm``).
"""

from . import compat

compat.apply()

__all__ = ["compat"]
