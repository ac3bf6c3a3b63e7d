"""Explicit builders from a :class:`~protoseg.config.Config` to models, criteria and WSSS methods.

Plain name -> function maps, no registry: adding a head means adding one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import Config
from .backbones import build_backbone
from .decoder import ConcatFusionDecoder
from .segmentor import Segmentor

IGNORE_INDEX = 255


def _linear_head(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    from .heads.linear import LinearHead

    return LinearHead(in_channels, num_classes)


def _protoseg_kwargs(cfg: Config) -> dict:
    p = cfg.model.protoseg
    return {
        "num_prototypes": p.num_prototypes,
        "proj_dim": p.proj_dim,
        "momentum": p.momentum,
        "assignment": p.assignment,
        "sinkhorn_epsilon": p.sinkhorn_epsilon,
        "sinkhorn_iters": p.sinkhorn_iters,
        "init": p.init,
        "projection": p.projection,
        "ignore_index": IGNORE_INDEX,
    }


def _protoseg_head(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    from .heads.protoseg import ProtoSegHead

    return ProtoSegHead(in_channels, num_classes, **_protoseg_kwargs(cfg))


def _contrast_kwargs(cfg: Config) -> dict:
    c = cfg.model.contrast
    return {
        "proj_dim": c.proj_dim,
        "use_memory": c.use_memory,
        "memory_size": c.memory_size,
        "pixels_per_image": c.pixels_per_image,
    }


def _contrast_head(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    from .heads.contrast import ContrastHead

    return ContrastHead(in_channels, num_classes, **_contrast_kwargs(cfg))


def _protoseg_contrast_head(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    from .heads.protoseg_contrast import ProtoSegContrastHead

    return ProtoSegContrastHead(
        in_channels, num_classes, protoseg=_protoseg_kwargs(cfg), contrast=_contrast_kwargs(cfg)
    )


HEADS: dict[str, Callable[[Config, int, int], nn.Module]] = {
    "linear": _linear_head,
    "protoseg": _protoseg_head,
    "contrast": _contrast_head,
    "protoseg_contrast": _protoseg_contrast_head,
}


def _choice(kind: str, name: str, choices) -> None:
    if name not in choices:
        raise ValueError(f"unknown {kind} '{name}' (valid: {', '.join(sorted(choices))})")


def build_backbone_from_config(cfg: Config) -> nn.Module:
    b = cfg.model.backbone
    return build_backbone(b.name, b.pretrained, b.output_stride, b.out_indices)


def build_segmentor(cfg: Config, num_classes: int) -> Segmentor:
    """Backbone + concat-fusion decoder + the head named by ``model.head``."""
    _choice("model.head", cfg.model.head, HEADS)
    backbone = build_backbone_from_config(cfg)
    decoder = ConcatFusionDecoder(
        backbone.out_channels, cfg.model.decoder.channels, cfg.model.decoder.dropout
    )
    head = HEADS[cfg.model.head](cfg, decoder.out_channels, num_classes)
    return Segmentor(backbone, decoder, head, num_classes)


def build_criterion(cfg: Config) -> nn.Module:
    """The training criterion of ``model.head`` (criterion contract of docs/architecture.md)."""
    head = cfg.model.head
    _choice("model.head", head, HEADS)
    if head == "linear":
        from ..losses.segmentation import SegmentationCELoss

        return SegmentationCELoss(IGNORE_INDEX)
    p, c = cfg.model.protoseg, cfg.model.contrast
    protoseg_loss = contrast_loss = None
    if head in ("protoseg", "protoseg_contrast"):
        from ..losses.protoseg import ProtoSegLoss

        protoseg_loss = ProtoSegLoss(p.ppc_weight, p.ppd_weight, p.temperature, IGNORE_INDEX)
    if head in ("contrast", "protoseg_contrast"):
        from ..losses.contrast_seg import ContrastSegLoss

        contrast_loss = ContrastSegLoss(
            contrast_weight=c.weight,
            warmup_iters=c.warmup_iters,
            ce_weight=0.0 if protoseg_loss is not None else 1.0,
            temperature=c.temperature,
            base_temperature=c.base_temperature,
            max_samples=c.max_samples,
            max_views=c.max_views,
            ignore_index=IGNORE_INDEX,
            seed=cfg.train.seed,
        )
    if protoseg_loss is not None and contrast_loss is not None:
        from ..losses.combined import SumOfCriteria

        return SumOfCriteria(protoseg_loss, contrast_loss)
    return protoseg_loss if protoseg_loss is not None else contrast_loss


WSSS_METHODS = ("cam", "ppc", "rca")


def build_wsss_method(cfg: Config, num_classes: int) -> nn.Module:
    """The CAM network wrapped in its WSSS method (``model.wsss``: cam | ppc | rca).

    ``num_classes`` counts the foreground classes (the image-level tags).
    """
    name = cfg.model.wsss
    _choice("model.wsss", str(name), WSSS_METHODS)
    backbone = build_backbone_from_config(cfg)
    if name == "rca":
        from ..wsss.rca import RCAMethod, RCANetwork

        r = cfg.model.rca
        network = RCANetwork(
            backbone, num_classes, num_prototypes=r.num_prototypes, aggregation=r.aggregation
        )
        return RCAMethod(
            network,
            memory_size=r.memory_size,
            momentum=r.momentum,
            score_threshold=r.score_threshold,
            contrast_weight=r.contrast_weight,
            aux_weight=r.aux_weight,
            contrast_start_iter=r.contrast_start_iter,
            num_prototypes=r.num_prototypes,
            kmeans_iters=r.kmeans_iters,
            temperature=r.temperature,
            mixup_alpha=r.mixup_alpha,
            aggregation=r.aggregation,
        )
    from ..models.cam import CAMNet
    from ..wsss.methods import build_wsss_method as build_cam_method

    network = CAMNet(backbone, num_classes)
    if name == "cam":
        return build_cam_method("cam", network)
    p = cfg.model.ppc
    return build_cam_method(
        "ppc",
        network,
        temperature=p.temperature,
        top_k=p.top_k,
        bg_threshold=p.bg_threshold,
        cross_weight=p.cross_weight,
        intra_weight=p.intra_weight,
        mining=p.mining,
        scale_factor=p.scale_factor,
    )


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """A Segmentor, or a WSSS method when ``model.wsss`` is set (num_classes: foreground tags)."""
    if cfg.model.wsss:
        return build_wsss_method(cfg, num_classes)
    return build_segmentor(cfg, num_classes)
