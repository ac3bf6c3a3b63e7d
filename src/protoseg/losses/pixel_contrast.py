"""Supervised pixel contrast of ContrastiveSeg (Wang et al., ICCV 2021, Eq. 3 and Sec. 3.4).

For an anchor a with positives P_a (same class, not itself) and negatives N_a (other classes):
``L_a = tau / base_tau * mean_{p in P_a} -log( e^{s_ap} / (e^{s_ap} + sum_{n in N_a} e^{s_an}) )``,
``s = <a, x> / tau``, and the loss is the mean of L_a over the anchors with at least one positive.
Written as ``softplus(logsumexp_{n in N_a} s_an - s_ap)``, which never evaluates log(0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.labels import IGNORE_INDEX, resize_labels
from ..prototypes.pixel_queue import PixelQueue
from .anchor_sampling import AnchorSampler, HardAnchorSampler, gather_pixels, pack_anchor_indices
from .memory_contrast import anchor_weights, memory_contrast


def supervised_contrast(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor | None = None,
    contrast_labels: torch.Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    anchor_valid: torch.Tensor | None = None,
    contrast_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss of ``anchors`` (M, D) with labels (M,) against ``contrast`` (N, D).

    Without ``contrast`` the anchors are contrasted with each other and an anchor is never its own
    positive. With ``contrast`` (e.g. a memory queue) there is no self exclusion. ``anchor_valid`` (M,)
    and ``contrast_valid`` (N,) mask out padding rows (they are neither anchors, positives nor
    negatives). Computed in at least float32 with autocast off. Returns a scalar; 0 connected to the
    graph when no anchor has a positive.
    """
    if anchors.dim() != 2 or anchor_labels.shape != anchors.shape[:1]:
        raise ValueError(
            f"anchors must be (M, D) with anchor_labels (M,), got {tuple(anchors.shape)} "
            f"and {tuple(anchor_labels.shape)}"
        )
    if (contrast is None) != (contrast_labels is None):
        raise ValueError("contrast and contrast_labels must be given together")
    if contrast is not None and (contrast.dim() != 2 or contrast.shape[1] != anchors.shape[1]):
        raise ValueError(f"contrast must be (N, {anchors.shape[1]}), got {tuple(contrast.shape)}")
    if contrast is not None and contrast_labels.shape != contrast.shape[:1]:
        raise ValueError(
            f"contrast_labels must be ({contrast.shape[0]},), got {tuple(contrast_labels.shape)}"
        )
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got {temperature} and {base_temperature}")

    compute_dtype = torch.promote_types(anchors.dtype, torch.float32)
    if anchor_valid is None:
        anchor_valid = torch.ones_like(anchor_labels, dtype=torch.bool)
    if contrast is not None and contrast_valid is None:
        contrast_valid = torch.ones_like(contrast_labels, dtype=torch.bool)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors = anchors.to(compute_dtype)
        if contrast is not None:
            contrast = contrast.to(compute_dtype)
        return _SupervisedContrast.apply(
            anchors, contrast, anchor_labels, contrast_labels, anchor_valid, contrast_valid,
            temperature, base_temperature,
        )  # fmt: skip


class _SupervisedContrast(torch.autograd.Function):
    """Eq. 3 with its closed-form gradient, so autograd keeps one (M, N) matrix instead of a dozen.

    With ``s = <a, x> / tau``, ``n_a = logsumexp_{k in N_a} s_ak`` and ``w_a`` the weight of anchor a in
    the final mean (``tau / base_tau / (|P_a| * #anchors with a positive)``, 0 without a positive):
    ``dL/ds_ap = -w_a sigmoid(n_a - s_ap)`` for positives and
    ``dL/ds_an = w_a softmax_{N_a}(s_a)_n * sum_p sigmoid(n_a - s_ap)`` for negatives. The backward is
    then one matmul: ``dL/dA = (G + G^T) A / tau`` in-batch (``contrast`` None, the anchors are both
    sides), ``dL/dA = G X / tau`` and ``dL/dX = G^T A / tau`` against a contrast set X.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        anchors: torch.Tensor,
        contrast: torch.Tensor | None,
        anchor_labels: torch.Tensor,
        contrast_labels: torch.Tensor | None,
        anchor_valid: torch.Tensor,
        contrast_valid: torch.Tensor | None,
        temperature: float,
        base_temperature: float,
    ) -> torch.Tensor:
        exclude_self = contrast is None
        if exclude_self:
            contrast, contrast_labels, contrast_valid = anchors, anchor_labels, anchor_valid
        lowest = torch.finfo(anchors.dtype).min
        logits = torch.mm(anchors * (1.0 / temperature), contrast.T)
        same_class = anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)
        not_negative = same_class | ~contrast_valid.unsqueeze(0)
        positive = same_class & contrast_valid.unsqueeze(0)
        if exclude_self:
            positive.diagonal().fill_(False)
        positive = positive.to(logits.dtype)

        # Negatives: exp(s - max) in place, 0 elsewhere. A row without negatives gets a finite "log 0"
        # (lowest), so its pair losses are softplus(-huge) = 0 with zero gradient.
        negative_exp = torch.where(not_negative, lowest, logits)
        row_max = negative_exp.amax(dim=1, keepdim=True)
        negative_exp = negative_exp.sub_(row_max).exp_()
        negative_sum = negative_exp.sum(dim=1, keepdim=True)
        # finite everywhere (logits are finite and the log-sum-exp is >= lowest), so masks can multiply
        margin = torch.sub(row_max + negative_sum.log(), logits)
        pair_loss = F.softplus(margin).mul_(positive)

        positive_count = positive.sum(dim=1)
        weight = anchor_weights(
            positive_count, (positive_count > 0) & anchor_valid, temperature, base_temperature
        )
        loss = (pair_loss.sum(dim=1) * weight).sum()

        if any(ctx.needs_input_grad[:2]):
            positive_sigmoid = torch.sigmoid(margin).mul_(positive)
            negative_scale = weight * positive_sigmoid.sum(dim=1) / negative_sum.squeeze(1)
            pair_gradient = negative_exp.mul_(negative_scale.unsqueeze(1))
            pair_gradient = pair_gradient.sub_(positive_sigmoid.mul_(weight.unsqueeze(1)))
            ctx.save_for_backward(pair_gradient, anchors, None if exclude_self else contrast)
            ctx.temperature = temperature
            ctx.exclude_self = exclude_self
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:
        pair_gradient, anchors, contrast = ctx.saved_tensors
        scale = grad_output / ctx.temperature
        grad_anchors = grad_contrast = None
        if ctx.exclude_self:
            grad_anchors = torch.mm(pair_gradient + pair_gradient.T, anchors).mul_(scale)
        else:
            if ctx.needs_input_grad[0]:
                grad_anchors = torch.mm(pair_gradient, contrast).mul_(scale)
            if ctx.needs_input_grad[1]:
                grad_contrast = torch.mm(pair_gradient.T, anchors).mul_(scale)
        return grad_anchors, grad_contrast, None, None, None, None, None, None


class PixelContrastLoss(nn.Module):
    """Pixel contrast of sampled anchors, in-batch or against a :class:`PixelQueue` memory.

    ``forward(embeddings (B, D, H, W), labels (B, H', W'), predictions (B, H'', W'') | None,
    memory | None, generator | None, num_classes | None) -> scalar``. Labels and predictions are
    resized to (H, W) by nearest neighbour. Anchors are sampled by ``sampler`` (default
    :class:`HardAnchorSampler`), compacted to ``sampler.capacity`` rows, then contrasted
    (``temperature``/``base_temperature``) with each other, or with the queue contents using
    ``memory_temperature`` for both temperatures (as released). Gradients reach only the anchors.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = IGNORE_INDEX,
        sampler: AnchorSampler | None = None,
        memory_temperature: float = 0.07,
    ) -> None:
        super().__init__()
        for name, value in (
            ("temperature", temperature),
            ("base_temperature", base_temperature),
            ("memory_temperature", memory_temperature),
        ):
            if value <= 0:
                raise ValueError(f"PixelContrastLoss {name} must be > 0, got {value}")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.memory_temperature = memory_temperature
        self.ignore_index = ignore_index
        self.sampler = sampler or HardAnchorSampler(max_samples, max_views, ignore_index)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        predictions: torch.Tensor | None = None,
        memory: PixelQueue | None = None,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ) -> torch.Tensor:
        if embeddings.dim() != 4:
            raise ValueError(f"embeddings must be (B, D, H, W), got shape {tuple(embeddings.shape)}")
        batch, dim, height, width = embeddings.shape
        flat_labels = resize_labels(labels, (height, width)).view(batch, height * width)
        flat_predictions = None
        if predictions is not None:
            flat_predictions = resize_labels(predictions, (height, width)).view(batch, height * width)
        if memory is not None:
            if num_classes is not None and num_classes != memory.num_classes:
                raise ValueError(f"num_classes {num_classes} differs from the memory's {memory.num_classes}")
            num_classes = memory.num_classes

        indices = self.sampler.sample_indices(flat_labels, flat_predictions, generator, num_classes)
        capacity = min(self.sampler.capacity, indices.valid.numel())
        packed = pack_anchor_indices(indices, capacity)
        anchors = gather_pixels(embeddings, flat_labels, packed.pixel_index)

        if memory is None:
            return supervised_contrast(
                anchors, packed.labels, temperature=self.temperature,
                base_temperature=self.base_temperature, anchor_valid=packed.valid,
            )  # fmt: skip
        if memory.dim != dim:
            raise ValueError(f"memory dim {memory.dim} differs from embedding dim {dim}")
        banks = memory.contrast_banks(snapshot=anchors.requires_grad)
        return memory_contrast(
            anchors, packed.labels, banks, self.memory_temperature, self.memory_temperature, packed.valid
        )
