"""The methods' losses as nn.Modules (torch only).

- ProtoSeg: :class:`ProtoSegLoss` (CE + PPC + PPD).
- ContrastiveSeg: :class:`PixelContrastLoss`, :func:`supervised_contrast`, anchor samplers,
  :class:`ContrastSegLoss` (CE + pixel contrast after warm-up).
- PPC (WSSS): :class:`PixelToPrototypeContrast`.
- RCA (WSSS): :class:`RegionContrastLoss`.
"""

from .anchor_sampling import AnchorSampler, HardAnchorSampler, RandomAnchorSampler
from .contrast_seg import ContrastSegLoss
from .memory_contrast import memory_contrast
from .pixel_contrast import PixelContrastLoss, supervised_contrast
from .ppc import PixelToPrototypeContrast
from .protoseg import ProtoSegLoss, pixel_prototype_contrast_loss, pixel_prototype_distance_loss
from .region_contrast import RegionContrastLoss, sample_beta
from .segmentation import SegmentationCELoss, upsampled_cross_entropy

__all__ = [
    "AnchorSampler",
    "ContrastSegLoss",
    "HardAnchorSampler",
    "PixelContrastLoss",
    "PixelToPrototypeContrast",
    "ProtoSegLoss",
    "RandomAnchorSampler",
    "RegionContrastLoss",
    "SegmentationCELoss",
    "memory_contrast",
    "pixel_prototype_contrast_loss",
    "pixel_prototype_distance_loss",
    "sample_beta",
    "supervised_contrast",
    "upsampled_cross_entropy",
]
