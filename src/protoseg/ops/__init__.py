"""Pure tensor functions (torch only): Sinkhorn, k-means, masked pooling, per-class top-k, metrics."""

from .kmeans import kmeans
from .metrics import (
    confusion_matrix,
    format_metrics_table,
    segmentation_metrics,
    threshold_sweep_confusion_matrices,
)
from .pooling import masked_average_pool
from .sinkhorn import segmented_sinkhorn, sinkhorn
from .topk_prototypes import topk_weighted_prototypes

__all__ = [
    "confusion_matrix",
    "format_metrics_table",
    "kmeans",
    "masked_average_pool",
    "segmentation_metrics",
    "segmented_sinkhorn",
    "sinkhorn",
    "threshold_sweep_confusion_matrices",
    "topk_weighted_prototypes",
]
