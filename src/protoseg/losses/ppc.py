"""Pixel-to-prototype contrast for WSSS (Du et al., "Weakly Supervised Semantic Segmentation by
Pixel-to-Prototype Contrast", CVPR 2022).

The regulariser compares the projected pixel embeddings of two views of the same images (source S and
target T, aligned pixel to pixel by the caller) with class prototypes estimated from the views' CAMs:

- ``F(v, y, P) = -log softmax_c(v . p_c / tau)[y]`` (Eq. 1), prototypes from the top-K CAM pixels of the
  whole batch (Eq. 2, :func:`protoseg.ops.topk_weighted_prototypes`);
- cross-prototype ``L_cp = F(v_S, y_S, P_T), F(v_T, y_T, P_S)`` (Eq. 3) and cross-CAM
  ``L_cc = F(v_S, y_T, P_S), F(v_T, y_S, P_T)`` (Eq. 4);
- intra-view ``L_intra = F(v, y, P)`` within each view (Eq. 6) with semi-hard prototype mining and hard
  pixel sampling (Sec. 3.5).

Conventions of this implementation (see also ``docs/methods.md`` section 3):

- Channel 0 of a CAM is the background, channels 1..C the foreground classes.
- Pseudo labels and prototypes are computed under ``no_grad`` from detached inputs: gradients flow into
  the pixel embeddings ``v`` of both views (hence into the projector and the backbone), never through
  the prototypes and never into the CAM.
- Prototype confidence of the background is ``1 - max_c(normalised foreground CAM)``. The pseudo label
  uses the constant ``bg_threshold`` for the background, as the paper does; the release also ranks the
  background prototype's pixels by that constant, which makes its top-K an arbitrary tie-break.
- A class whose top-K confidences all vanish (not tagged anywhere in the batch, or a flat CAM) has an
  invalid prototype: it is left out of every softmax denominator, and pixels whose positive prototype is
  invalid are left out of the loss (this can only happen in the cross-view terms).
- Each term is averaged over its two directions / two views, as the release does (``gamma * (a + b) / 2``);
  the paper writes the sum, i.e. twice the weight.
- ``mining="paper"``: per pixel the ``ceil(0.6 n)`` most similar of its ``n`` valid negative prototypes
  are the hard ones and a random ``ceil(half)`` of them enter the denominator; per pseudo-class with
  ``m`` pixels, ``m // 2`` pixels drawn at random plus the ``m // 2`` hardest (lowest similarity to
  their positive prototype).
- ``mining="released"``: the denominator is the positive plus the valid prototypes whose similarity rank
  lies in the window ``[floor(3 M / 21), max(floor(13 M / 21), start + 1))`` of the ``M`` valid
  prototypes, the positive included when it falls inside (with 21 prototypes: ranks 4..13, 1-based, as
  in the release); per pseudo-class ``m // 2`` random pixels plus the pixels of ascending-similarity rank
  ``[floor(6 m / 10) - m // 2, floor(6 m / 10))`` (the hardest ~10%-60%).
- In both modes a pixel drawn by both samplers counts twice (as in the release); the intra-view loss is
  the mean over pseudo-classes of the weighted per-class mean (the release also counts a class with a
  single pixel, which contributes 0, in that mean; here it is skipped).
- Random choices come from ``generator`` (which must live on the inputs' device type: a CPU generator
  with CUDA inputs raises ``ValueError``), or from the global torch RNG when none is given. Order per
  view: prototype mining, then pixel sampling.
- No host synchronisation and no Python loop over classes or images: fixed shapes and masks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protoseg.ops.topk_prototypes import topk_weighted_prototypes

MINING_MODES = ("paper", "released")
_NORMALIZATION_EPSILON = 1e-5


def _check_mining(mining: str) -> None:
    if mining not in MINING_MODES:
        raise ValueError(f"PPC mining must be one of {MINING_MODES}, got '{mining}'")


def _uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device.type != device.type:
        # drawing elsewhere and copying would synchronise the host with the device
        raise ValueError(
            f"PPC: the generator lives on '{generator.device}' but the tensors on '{device}'; "
            f"create it with torch.Generator(device='{device}')"
        )
    return torch.rand(shape, device=device, generator=generator)


@torch.no_grad()
def cam_pseudo_labels(
    cam: torch.Tensor, tags: torch.Tensor, bg_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo labels and prototype confidences of one view (PPC Sec. 3.2).

    Each foreground channel is ReLU'd and min-max normalised to [0, 1] per image and class, then zeroed
    for classes that are not in the image's tags; the pseudo label is the argmax over
    ``[bg_threshold, normalised foreground]`` (ties go to the background).

    Args:
        cam: ``(B, C+1, h, w)`` raw CAM, channel 0 = background (its values are not used).
        tags: ``(B, C)`` multi-hot foreground tags.
        bg_threshold: constant background score.

    Returns:
        ``labels`` ``(B, h, w)`` int64 in ``[0, C]`` and ``confidence`` ``(B, C+1, h, w)``: channel 0 is
        ``1 - max_c`` of the normalised foreground CAM, channels 1..C the normalised foreground CAM.
    """
    foreground = cam[:, 1:].detach().relu()
    flat = foreground.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    high = flat.amax(dim=2, keepdim=True)
    normalized = ((flat - low) / (high - low).clamp_min(_NORMALIZATION_EPSILON)).view_as(foreground)
    normalized = normalized * tags.to(normalized.dtype)[:, :, None, None]
    background = torch.full_like(normalized[:, :1], bg_threshold)
    labels = torch.cat([background, normalized], dim=1).argmax(dim=1)
    confidence = torch.cat([1 - normalized.amax(dim=1, keepdim=True), normalized], dim=1)
    return labels, confidence


def pixel_to_prototype_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    denominator_mask: torch.Tensor | None = None,
    repeat_positive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel contrast of Eq. 1, ``F(v_i, y_i, P) = -log softmax_c(v_i . p_c / tau)[y_i]``.

    Args:
        embeddings: ``(N, D)`` L2-normalised pixel embeddings ``v``.
        labels: ``(N,)`` int64 positive prototype index ``y`` per pixel.
        prototypes: ``(M, D)`` L2-normalised prototypes ``P``.
        valid: ``(M,)`` bool; invalid prototypes never enter a denominator.
        temperature: ``tau``.
        denominator_mask: optional ``(N, M)`` bool: the prototypes of each pixel's denominator
            (default: all valid ones). Without ``repeat_positive`` the positive is always added.
        repeat_positive: the denominator is the positive term plus the masked terms, the positive counted
            again when the mask holds it (the release's intra-view loss).

    Returns:
        ``loss`` ``(N,)`` (0 where unusable) and ``usable`` ``(N,)`` bool: the positive prototype is valid.
    """
    logits = embeddings @ prototypes.t() / temperature  # (N, M)
    positive_logit = logits.gather(1, labels[:, None]).squeeze(1)
    mask = valid[None, :].expand_as(logits)
    if denominator_mask is not None:
        mask = mask & denominator_mask
    if not repeat_positive:
        mask = mask | (labels[:, None] == torch.arange(logits.shape[1], device=labels.device))
    masked_logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    if repeat_positive:
        masked_logits = torch.cat([positive_logit[:, None], masked_logits], dim=1)
    loss = torch.logsumexp(masked_logits, dim=1) - positive_logit
    usable = valid[labels]
    return torch.where(usable, loss, torch.zeros_like(loss)), usable


def _descending_ranks(keys: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` rank of each entry of each row in descending order of ``keys`` (0 = largest)."""
    order = torch.argsort(keys, dim=1, descending=True, stable=True)
    positions = torch.arange(keys.shape[1], device=keys.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


@torch.no_grad()
def semi_hard_prototype_mask(
    similarity: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    mining: str = "paper",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Semi-hard prototype mining (PPC Sec. 3.5): the prototypes of each pixel's intra-view denominator.

    Args:
        similarity: ``(N, M)`` ``v_i . p_c``.
        labels: ``(N,)`` positive prototype index per pixel.
        valid: ``(M,)`` bool valid prototypes.
        mining: ``"paper"``: of the ``n`` valid negatives, the ``ceil(0.6 n)`` most similar are hard and a
            uniformly random ``ceil(0.5 ceil(0.6 n))`` of them are returned (positive never included).
            ``"released"``: the valid prototypes of descending-similarity rank
            ``[floor(3 V / 21), max(floor(13 V / 21), start + 1))`` with ``V`` valid prototypes, the
            positive included when inside (to be used with ``repeat_positive=True``).
        generator: random source of the paper mode.

    Returns:
        ``(N, M)`` bool mask.
    """
    _check_mining(mining)
    num_prototypes = similarity.shape[1]
    classes = torch.arange(num_prototypes, device=similarity.device)
    if mining == "released":
        ranks = _descending_ranks(similarity.masked_fill(~valid[None, :], float("-inf")))
        num_valid = valid.sum()
        start = (3 * num_valid) // 21
        end = torch.maximum((13 * num_valid) // 21, start + 1)
        return valid[None, :] & (ranks >= start) & (ranks < end)
    negatives = valid[None, :] & (labels[:, None] != classes)
    ranks = _descending_ranks(similarity.masked_fill(~negatives, float("-inf")))
    num_negatives = negatives.sum(dim=1, keepdim=True)
    num_hard = (6 * num_negatives + 9) // 10  # ceil(0.6 n)
    num_kept = (num_hard + 1) // 2  # ceil(0.5 * hard)
    hard = negatives & (ranks < num_hard)
    random_keys = _uniform(tuple(similarity.shape), similarity.device, generator).masked_fill(~hard, 2.0)
    random_ranks = torch.argsort(torch.argsort(random_keys, dim=1), dim=1)
    return hard & (random_ranks < num_kept)


def _ranks_within_buckets(keys: torch.Tensor, buckets: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """``(N,)`` ascending rank of ``keys`` among the entries of the same bucket (0 = smallest)."""
    by_key = torch.argsort(keys, stable=True)
    order = by_key[torch.argsort(buckets[by_key], stable=True)]
    counts = torch.zeros(num_buckets, dtype=torch.long, device=keys.device).index_add_(
        0, buckets, torch.ones_like(buckets)
    )
    starts = counts.cumsum(0) - counts
    sorted_buckets = buckets[order]
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(keys.shape[0], device=keys.device) - starts[sorted_buckets]
    return ranks


@torch.no_grad()
def hard_pixel_weights(
    positive_similarity: torch.Tensor,
    labels: torch.Tensor,
    usable: torch.Tensor,
    num_classes: int,
    mining: str = "paper",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hard pixel sampling (PPC Sec. 3.5): per pseudo-class, half the pixels at random, half hard ones.

    For a pseudo-class with ``m`` usable pixels: ``m // 2`` pixels drawn uniformly without replacement,
    plus, by ascending similarity to the positive prototype (hardest first), ranks ``[0, m // 2)``
    (``"paper"``) or ``[floor(6 m / 10) - m // 2, floor(6 m / 10))`` (``"released"``). The two draws are
    independent, so a pixel may be drawn twice.

    Args:
        positive_similarity: ``(N,)`` ``v_i . p_{y_i}``.
        labels: ``(N,)`` pseudo labels in ``[0, num_classes)``.
        usable: ``(N,)`` bool; other pixels get weight 0 and do not count in ``m``.
        num_classes: number of pseudo-classes (``C + 1``).
        mining: ``"paper"`` or ``"released"``.
        generator: random source.

    Returns:
        ``(N,)`` float weights in {0, 1, 2}: how many times each pixel was drawn.
    """
    _check_mining(mining)
    buckets = torch.where(usable, labels, torch.full_like(labels, num_classes))  # last bucket: unused
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=labels.device).index_add_(
        0, buckets, torch.ones_like(buckets)
    )
    class_size = counts[buckets]
    half = class_size // 2
    random_keys = _uniform(tuple(labels.shape), labels.device, generator)
    random_pick = _ranks_within_buckets(random_keys, buckets, num_classes + 1) < half
    hard_ranks = _ranks_within_buckets(positive_similarity, buckets, num_classes + 1)
    if mining == "paper":
        hard_pick = hard_ranks < half
    else:
        end = (6 * class_size) // 10
        hard_pick = (hard_ranks >= end - half) & (hard_ranks < end)
    weights = random_pick.to(positive_similarity.dtype) + hard_pick.to(positive_similarity.dtype)
    return weights * usable.to(weights.dtype)


def intra_view_contrast(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    mining: str = "paper",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Intra-view contrast ``L_intra`` of one view (Eq. 6) with semi-hard mining and hard pixel sampling.

    Args: as :func:`pixel_to_prototype_loss`; ``mining`` and ``generator`` as
    :func:`semi_hard_prototype_mask` and :func:`hard_pixel_weights` (called in that order).

    Returns:
        scalar: mean over pseudo-classes with at least one sampled pixel of the weighted mean of ``F``
        over the class's sampled pixels (0, still attached to the graph, when there is none).
    """
    num_classes = prototypes.shape[0]
    similarity = (embeddings @ prototypes.t()).detach()
    denominator_mask = semi_hard_prototype_mask(similarity, labels, valid, mining, generator)
    repeat_positive = mining == "released"
    loss, usable = pixel_to_prototype_loss(
        embeddings, labels, prototypes, valid, temperature, denominator_mask, repeat_positive
    )
    positive_similarity = similarity.gather(1, labels[:, None]).squeeze(1)
    weights = hard_pixel_weights(positive_similarity, labels, usable, num_classes, mining, generator)
    buckets = torch.where(usable, labels, torch.full_like(labels, num_classes))
    class_loss = loss.new_zeros(num_classes + 1).index_add(0, buckets, loss * weights)
    class_weight = weights.new_zeros(num_classes + 1).index_add_(0, buckets, weights)
    present = class_weight > 0
    class_mean = class_loss / class_weight.clamp_min(1)
    return (class_mean * present).sum() / present.sum().clamp_min(1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


class PixelToPrototypeContrast(nn.Module):
    """PPC's contrast terms ``alpha L_cross + beta L_intra`` over a source and a target view (Sec. 3.4-3.5).

    Args:
        temperature: ``tau`` of Eq. 1 (0.1).
        top_k: K pixels per prototype, taken over the whole batch (32 in the paper).
        bg_threshold: constant background score of the pseudo labels (0.2).
        cross_weight: weight ``alpha`` of ``L_cp + L_cc`` (release: 0.1 on each).
        intra_weight: weight ``beta`` of ``L_intra`` (release: 0.1).
        mining: ``"paper"`` (default) or ``"released"``; see the module docstring.
        generator: random source of the intra-view sampling, on the inputs' device (global RNG when None).

    Computed in float32 with autocast off, whatever the input dtype.

    Example:
        >>> contrast = PixelToPrototypeContrast()
        >>> terms = contrast(cam_source, features_source, cam_target, features_target, tags)
        >>> terms["loss"].backward()
    """

    def __init__(
        self,
        temperature: float = 0.1,
        top_k: int = 32,
        bg_threshold: float = 0.2,
        cross_weight: float = 0.1,
        intra_weight: float = 0.1,
        mining: str = "paper",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_mining(mining)
        if temperature <= 0:
            raise ValueError(f"PPC temperature must be > 0, got {temperature}")
        if top_k < 1:
            raise ValueError(f"PPC top_k must be >= 1, got {top_k}")
        self.temperature = temperature
        self.top_k = top_k
        self.bg_threshold = bg_threshold
        self.cross_weight = cross_weight
        self.intra_weight = intra_weight
        self.mining = mining
        self.generator = generator

    def _view(
        self, cam: torch.Tensor, features: torch.Tensor, tags: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings ``(N, D)`` (with gradient), labels ``(N,)``, prototypes ``(M, D)``, valid ``(M,)``."""
        dtype = torch.promote_types(features.dtype, torch.float32)
        embeddings = F.normalize(features.to(dtype).permute(0, 2, 3, 1).flatten(0, 2), dim=1)
        labels, confidence = cam_pseudo_labels(cam.to(dtype), tags, self.bg_threshold)
        with torch.no_grad():
            flat_confidence = confidence.permute(0, 2, 3, 1).flatten(0, 2)
            prototypes, valid = topk_weighted_prototypes(flat_confidence, embeddings.detach(), top_k)
        return embeddings, labels.flatten(), prototypes, valid

    def forward(
        self,
        cam_source: torch.Tensor,
        features_source: torch.Tensor,
        cam_target: torch.Tensor,
        features_target: torch.Tensor,
        tags: torch.Tensor,
        top_k: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Contrast terms of two aligned views.

        Args:
            cam_source, cam_target: ``(B, C+1, h, w)`` raw CAMs (channel 0 = background).
            features_source, features_target: ``(B, D, h, w)`` projected features (not yet normalised).
            tags: ``(B, C)`` multi-hot foreground tags.
            top_k: pixels per prototype for this call (default: the module's ``top_k``).

        Returns:
            ``"loss"`` = ``cross_weight * (cp + cc) + intra_weight * intra``, and the detached terms
            ``"cp"``, ``"cc"``, ``"intra"``, each averaged over its two directions / views.
        """
        self._check_shapes(cam_source, features_source, cam_target, features_target, tags)
        # float32 even under autocast (which would run the similarity matmuls in half precision)
        with torch.autocast(device_type=features_source.device.type, enabled=False):
            top_k = self.top_k if top_k is None else top_k
            if top_k < 1:
                raise ValueError(f"PPC top_k must be >= 1, got {top_k}")
            source = self._view(cam_source, features_source, tags, top_k)
            target = self._view(cam_target, features_target, tags, top_k)
            (v_s, y_s, p_s, valid_s), (v_t, y_t, p_t, valid_t) = source, target
            tau = self.temperature

            def contrast(embeddings, labels, prototypes, valid) -> torch.Tensor:
                return _masked_mean(*pixel_to_prototype_loss(embeddings, labels, prototypes, valid, tau))

            cross_prototype = 0.5 * (contrast(v_s, y_s, p_t, valid_t) + contrast(v_t, y_t, p_s, valid_s))
            cross_cam = 0.5 * (contrast(v_s, y_t, p_s, valid_s) + contrast(v_t, y_s, p_t, valid_t))
            intra = 0.5 * (
                intra_view_contrast(v_s, y_s, p_s, valid_s, tau, self.mining, self.generator)
                + intra_view_contrast(v_t, y_t, p_t, valid_t, tau, self.mining, self.generator)
            )
        loss = self.cross_weight * (cross_prototype + cross_cam) + self.intra_weight * intra
        return {
            "loss": loss,
            "cp": cross_prototype.detach(),
            "cc": cross_cam.detach(),
            "intra": intra.detach(),
        }

    @staticmethod
    def _check_shapes(
        cam_source: torch.Tensor,
        features_source: torch.Tensor,
        cam_target: torch.Tensor,
        features_target: torch.Tensor,
        tags: torch.Tensor,
    ) -> None:
        named = {
            "cam_source": cam_source,
            "features_source": features_source,
            "cam_target": cam_target,
            "features_target": features_target,
        }
        for name, tensor in named.items():
            if tensor.dim() != 4:
                raise ValueError(f"PPC: {name} must be (B, channels, h, w), got shape {tuple(tensor.shape)}")
        reference = (cam_source.shape[0], *cam_source.shape[2:])
        for name, tensor in named.items():
            if (tensor.shape[0], *tensor.shape[2:]) != reference:
                raise ValueError(
                    f"PPC: {name} has batch/spatial shape {(tensor.shape[0], *tensor.shape[2:])}, expected "
                    f"{reference} (resize the source view to the target's size first)"
                )
        if cam_target.shape[1] != cam_source.shape[1] or features_target.shape[1] != features_source.shape[1]:
            raise ValueError(
                f"PPC: channel mismatch between views: cams {cam_source.shape[1]} vs {cam_target.shape[1]}, "
                f"features {features_source.shape[1]} vs {features_target.shape[1]}"
            )
        if cam_source.shape[1] < 2:
            raise ValueError(f"PPC: cams need background + >= 1 class channels, got {cam_source.shape[1]}")
        if tuple(tags.shape) != (cam_source.shape[0], cam_source.shape[1] - 1):
            raise ValueError(
                f"PPC: tags must be (B, C) = {(cam_source.shape[0], cam_source.shape[1] - 1)}, "
                f"got {tuple(tags.shape)}"
            )
