"""Segmentation heads (contract in docs/architecture.md): linear baseline, ProtoSeg, contrast, both."""

from .contrast import ContrastHead, ProjectionHead
from .linear import LinearHead
from .protoseg import ProtoSegHead
from .protoseg_contrast import ProtoSegContrastHead

__all__ = ["ContrastHead", "LinearHead", "ProjectionHead", "ProtoSegContrastHead", "ProtoSegHead"]
