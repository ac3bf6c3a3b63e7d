"""The methods' losses as nn.Modules (torch only)."""

from .protoseg import ProtoSegLoss, pixel_prototype_contrast_loss, pixel_prototype_distance_loss
from .ppc import PixelToPrototypeContrast
from .anchor_sampling import AnchorSampler, HardAnchorSampler, RandomAnchorSampler
from .pixel_contrast import PixelContrastLoss, memory_contrast, supervised_contrast
from .contrast_seg import ContrastSegLoss
from .region_contrast import RegionContrastLoss, sample_beta
