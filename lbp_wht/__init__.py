"""LBP-WHT: low-rank backpropagation via Walsh-Hadamard transforms (Yang et al., NeurIPS 2023).

Pure PyTorch. Typical use on any vision model::

    import lbp_wht
    report = lbp_wht.convert(model, [dict(target="all-linear", method="lbp", radius=4)])
    lbp_wht.freeze(model, ["blocks.*", "head.*"])
    print(report, lbp_wht.trainable_summary(model), sep="\\n")

The OpenMMLab integration lives in :mod:`lbp_wht.integrations`. Importing ``lbp_wht`` applies
the environment shims of :mod:`lbp_wht.integrations.compat` (pure torch / standard library, no
effect where torchvision and mmcv load normally), so timm, mmpretrain and mmseg import after it
in any order.
"""

from .integrations import compat as _compat

_compat.apply()

from . import lhe  # noqa: E402
from .bases import basis_matrix, lp_l1_rank, select_bases, walsh_matrix  # noqa: E402
from .config import LBPConfig, LoRAConfig  # noqa: E402
from .conversion import (  # noqa: E402
    ALL_LINEAR,
    ConversionReport,
    TrainableSummary,
    convert,
    freeze,
    keep_batchnorm_eval,
    trainable_summary,
    unconvert,
)
from .functional import lbp_forward  # noqa: E402
from .geometry import MapGeometry  # noqa: E402
from .layers import LBPConv2d, LBPLinear  # noqa: E402
from .lora import LBPLoRAConv2d, LBPLoRALinear, LoRAConv2d, LoRALinear  # noqa: E402
from .measure import measure_step  # noqa: E402
from .projection import WHTProjector  # noqa: E402
from .saving import load_adapted, save_adapted, trainable_state_dict  # noqa: E402

__all__ = [
    "LBPConfig",
    "LoRAConfig",
    "MapGeometry",
    "walsh_matrix",
    "select_bases",
    "basis_matrix",
    "lp_l1_rank",
    "WHTProjector",
    "lbp_forward",
    "LBPLinear",
    "LBPConv2d",
    "LoRALinear",
    "LoRAConv2d",
    "LBPLoRALinear",
    "LBPLoRAConv2d",
    "convert",
    "unconvert",
    "freeze",
    "trainable_summary",
    "keep_batchnorm_eval",
    "ConversionReport",
    "TrainableSummary",
    "ALL_LINEAR",
    "trainable_state_dict",
    "save_adapted",
    "load_adapted",
    "measure_step",
    "lhe",
]

__version__ = "0.1.0"
