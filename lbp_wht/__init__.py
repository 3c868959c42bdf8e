"""LBP-WHT: low-rank backpropagation via Walsh-Hadamard transforms (Yang et al., NeurIPS 2023).

Pure PyTorch. Typical use on any vision model::

    import lbp_wht
    report = lbp_wht.convert(model, [dict(target="all-linear", method="lbp", radius=4)])
    lbp_wht.freeze(model, ["blocks.*", "head.*"])
    print(report, lbp_wht.trainable_summary(model), sep="\\n")

The method core (this package's top-level modules) imports only torch, numpy and the standard
library, and ``import lbp_wht`` has no side effects: it installs no import hook and imports
neither torchvision, timm nor any OpenMMLab package. The OpenMMLab / timm integration lives in
:mod:`lbp_wht.integrations` (importing it applies the CPU compatibility shims of
:mod:`lbp_wht.integrations.compat`); the experiment harness in :mod:`lbp_wht.experiments`,
:mod:`lbp_wht.runs`, :mod:`lbp_wht.benchmark` and :mod:`lbp_wht.reporting`. On CPU-only
machines whose torchvision cannot import by itself, the environment hook of
:mod:`lbp_wht.integrations.envhook` (installed by ``make setup``) applies the shims on the first
import of torchvision, so ``import lbp_wht, timm`` works there too.
"""

from . import lhe
from .bases import basis_matrix, lp_l1_rank, select_bases, walsh_matrix
from .config import (
    HOTConfig,
    INSTANTConfig,
    LBPConfig,
    LoRAConfig,
    LoRAFAConfig,
    VeLoRAConfig,
    WTACRSConfig,
)
from .conversion import (
    ALL_LINEAR,
    ConversionReport,
    TrainableSummary,
    convert,
    freeze,
    keep_batchnorm_eval,
    trainable_summary,
    unconvert,
)
from .functional import lbp_forward
from .geometry import MapGeometry
from .hot import HOTConv2d, HOTLinear
from .instant import INSTANTConv2d, INSTANTLinear
from .layers import LBPConv2d, LBPLinear
from .lora import LBPLoRAConv2d, LBPLoRALinear, LoRAConv2d, LoRALinear
from .lora_fa import LoRAFAConv2d, LoRAFALinear
from .measure import measure_step
from .projection import WHTProjector
from .saving import load_adapted, save_adapted, trainable_state_dict
from .velora import VeLoRAConv2d, VeLoRALinear
from .wta_crs import WTACRSConv2d, WTACRSLinear

__all__ = [
    "LBPConfig",
    "LoRAConfig",
    "LoRAFAConfig",
    "VeLoRAConfig",
    "WTACRSConfig",
    "HOTConfig",
    "INSTANTConfig",
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
    "LoRAFALinear",
    "LoRAFAConv2d",
    "VeLoRALinear",
    "VeLoRAConv2d",
    "WTACRSLinear",
    "WTACRSConv2d",
    "HOTLinear",
    "HOTConv2d",
    "INSTANTLinear",
    "INSTANTConv2d",
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
