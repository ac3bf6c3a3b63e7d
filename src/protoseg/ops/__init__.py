"""Pure tensor functions (torch only): Sinkhorn, k-means, masked pooling, metrics."""

from .sinkhorn import segmented_sinkhorn, sinkhorn
from .topk_prototypes import topk_weighted_prototypes
from .kmeans import kmeans
from .pooling import masked_average_pool
from .metrics import (
    confusion_matrix,
    format_metrics_table,
    segmentation_metrics,
    threshold_sweep_confusion_matrices,
)
