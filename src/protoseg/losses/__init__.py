"""The methods' losses as nn.Modules (torch only)."""
from .protoseg import ProtoSegLoss, pixel_prototype_contrast_loss, pixel_prototype_distance_loss
