"""protoseg.viz: pictures of what a model learned (``protoseg visualize``), drawn with matplotlib's
Agg canvas only (no display, no pyplot state). See docs/visualize.md.

Names are imported lazily, so that building the ``protoseg`` parser (which imports
:mod:`protoseg.viz.command`) does not load matplotlib for the other commands.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Exemplars": "exemplars",
    "PixelSample": "embeddings",
    "Projection": "projection",
    "StreamingTopK": "topk",
    "TrainedRun": "run_data",
    "crop_exemplars": "exemplars",
    "draw_cams": "cams",
    "draw_curves": "curves",
    "draw_embeddings": "embeddings",
    "draw_exemplars": "exemplars",
    "draw_per_class_iou": "curves",
    "draw_prediction": "predictions",
    "draw_similarity": "similarity",
    "find_exemplars": "exemplars",
    "open_run": "run_data",
    "pca_2d": "projection",
    "predict_labels": "predictions",
    "project_2d": "projection",
    "prototype_head": "run_data",
    "read_eval_json": "curves",
    "read_metrics_log": "curves",
    "sample_pixel_embeddings": "embeddings",
    "similarity_maps": "similarity",
    "tsne_2d": "projection",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
