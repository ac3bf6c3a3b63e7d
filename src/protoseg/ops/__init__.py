"""Pure tensor functions (torch only): Sinkhorn, k-means, masked pooling, metrics."""
from .sinkhorn import segmented_sinkhorn, sinkhorn
