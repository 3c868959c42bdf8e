"""LBP-WHT: low-rank backpropagation via Walsh-Hadamard transforms (Yang et al., NeurIPS 2023).

Pure PyTorch. The OpenMMLab / timm integration lives in :mod:`lbp_wht.integrations`.
"""

from .bases import basis_matrix, lp_l1_rank, select_bases, walsh_matrix
from .convert import ConversionReport, convert, freeze
from .functional import lbp_forward
from .layers import LBPConv2d, LBPLinear
from .lora import LBPLoRAConv2d, LBPLoRALinear, LoRAConv2d, LoRALinear
from .projection import WHTProjector

__all__ = [
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
    "freeze",
    "ConversionReport",
]

__version__ = "0.1.0"
