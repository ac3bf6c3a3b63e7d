"""protoseg: prototype-based semantic segmentation (ProtoSeg, ContrastiveSeg, PPC, RCA)."""

__version__ = "0.1.0"
