"""Supervised pixel contrast of ContrastiveSeg (Wang et al., ICCV 2021, Eq. 3 and Sec. 3.4).

For an anchor a with positives P_a (same class, not itself) and negatives N_a (other classes):
``L_a = tau / base_tau * mean_{p in P_a} -log( e^{s_ap} / (e^{s_ap} + sum_{n in N_a} e^{s_an}) )``,
``s = <a, x> / tau``, and the loss is the mean of L_a over the anchors with at least one positive.
Written as ``softplus(logsumexp_{n in N_a} s_an - s_ap)``, which never evaluates log(0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..prototypes.pixel_queue import PixelQueue, resize_labels
from .anchor_sampling import AnchorSampler, HardAnchorSampler, gather_pixels, pack_anchor_indices


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


def _anchor_weights(
    positive_count: torch.Tensor, has_positive: torch.Tensor, temperature: float, base_temperature: float
) -> torch.Tensor:
    """Weight ``w_a`` (M,) of each anchor's summed pair losses in the final loss: ``tau / base_tau``
    over its positive count and over the number of anchors with a positive; 0 for the others."""
    weight = (temperature / base_temperature) / positive_count.clamp_min(1)
    return torch.where(has_positive, weight, 0.0) / has_positive.sum().clamp_min(1)


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
        weight = _anchor_weights(
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


def memory_contrast(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    banks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    anchor_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`supervised_contrast` of ``anchors`` (M, D) against class-structured memory banks.

    ``banks``: pairs of ``queue`` (C, S, D), whose row ``[c, s]`` has class c, and ``valid`` (C, S)
    filled slots. Same value as ``supervised_contrast(anchors, labels, rows, row_labels, ...,
    contrast_valid=...)`` over all banks' rows, but the class structure lets the negative sums be one
    logsumexp per (anchor, class), with no (M, C * S) masks, and the closed-form gradient
    (:class:`_MemoryContrast`) keeps one (M, C * S) matrix per bank. Gradients reach only the anchors;
    the queues are treated as constants. Anchor labels must lie in [0, C) where ``anchor_valid``.
    """
    if anchors.dim() != 2 or anchor_labels.shape != anchors.shape[:1]:
        raise ValueError(
            f"anchors must be (M, D) with anchor_labels (M,), got {tuple(anchors.shape)} "
            f"and {tuple(anchor_labels.shape)}"
        )
    if not banks:
        raise ValueError("memory_contrast needs at least one bank")
    classes = banks[0][0].shape[0]
    for queue, valid in banks:
        if queue.dim() != 3 or queue.shape[0] != classes or queue.shape[2] != anchors.shape[1]:
            raise ValueError(f"bank must be ({classes}, S, {anchors.shape[1]}), got {tuple(queue.shape)}")
        if valid.shape != queue.shape[:2]:
            raise ValueError(f"bank valid must be {tuple(queue.shape[:2])}, got {tuple(valid.shape)}")
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got {temperature} and {base_temperature}")

    compute_dtype = torch.promote_types(anchors.dtype, torch.float32)
    if anchor_valid is None:
        anchor_valid = torch.ones_like(anchor_labels, dtype=torch.bool)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors = anchors.to(compute_dtype)
        bank_tensors = [tensor for queue, valid in banks for tensor in (queue.to(compute_dtype), valid)]
        return _MemoryContrast.apply(
            anchors, anchor_labels, anchor_valid, temperature, base_temperature, *bank_tensors
        )


class _MemoryContrast(torch.autograd.Function):
    """:func:`memory_contrast` with the closed-form gradient of :class:`_SupervisedContrast`.

    Per bank the (M, C, S) logits are turned in place into ``exp(s - max_c s)`` (for the per-class
    log-sum-exp), then into the pair gradient ``dL/ds``: ``w_a softmax_{N_a}(s_a) * sum_p
    sigmoid(n_a - s_ap)`` on other classes and ``-w_a sigmoid(n_a - s_ap)`` on the own class (positives).
    Autograd keeps that one (M, C * S) matrix per bank; the backward is ``dL/dA = sum_banks G X / tau``.
    Inputs after the temperatures: ``queue`` (C, S, D), ``valid`` (C, S) per bank. The queues get no
    gradient (memory buffers).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        anchors: torch.Tensor,
        anchor_labels: torch.Tensor,
        anchor_valid: torch.Tensor,
        temperature: float,
        base_temperature: float,
        *bank_tensors: torch.Tensor,
    ) -> torch.Tensor:
        lowest = torch.finfo(anchors.dtype).min
        count = len(anchors)
        classes = bank_tensors[0].shape[0]
        own_class = anchor_labels.clamp(0, classes - 1)
        queues, exponentials, class_maxima, class_logsumexp, own_logits, own_valid = [], [], [], [], [], []
        for queue, valid in zip(bank_tensors[0::2], bank_tensors[1::2]):
            size = queue.shape[1]
            queue = queue.reshape(classes * size, -1)
            # empty slots get a "log 0" bias, added inside the matmul (no extra pass, no mask)
            bias = torch.zeros(classes * size, dtype=anchors.dtype, device=anchors.device)
            bias = bias.masked_fill(~valid.flatten(), lowest)
            logits = torch.addmm(bias, anchors, queue.T, alpha=1.0 / temperature).view(count, classes, size)
            own_index = own_class.view(count, 1, 1).expand(count, 1, size)
            own_logits.append(logits.gather(1, own_index).squeeze(1))
            own_valid.append(valid[own_class])
            class_max = logits.amax(dim=2, keepdim=True)
            exponential = logits.sub_(class_max).exp_()  # <= 1; an empty class gives exp(0) = 1
            class_logsumexp.append(class_max.squeeze(2) + exponential.sum(dim=2).log())
            queues.append(queue)
            exponentials.append(exponential)
            class_maxima.append(class_max.squeeze(2))
        per_class = torch.stack(class_logsumexp).logsumexp(dim=0)
        # a comparison, not F.one_hot: one_hot checks its input's range on the host
        own_mask = own_class.unsqueeze(1) == torch.arange(classes, device=anchors.device)
        negative_logsumexp = per_class.masked_fill(own_mask, lowest).logsumexp(dim=1, keepdim=True)
        positive = torch.cat(own_valid, dim=1) & anchor_valid.unsqueeze(1)
        # finite everywhere (logits and log-sum-exps are >= lowest), as in _SupervisedContrast
        margin = negative_logsumexp - torch.cat(own_logits, dim=1)
        pair_loss = torch.where(positive, F.softplus(margin), 0.0)

        positive_count = positive.sum(dim=1, dtype=anchors.dtype)
        weight = _anchor_weights(positive_count, positive_count > 0, temperature, base_temperature)
        loss = (pair_loss.sum(dim=1) * weight).sum()

        if ctx.needs_input_grad[0]:
            positive_gradient = torch.where(positive, torch.sigmoid(margin), 0.0).mul_(weight.unsqueeze(1))
            negative_scale = positive_gradient.sum(dim=1, keepdim=True)
            pair_gradients, offset = [], 0
            for exponential, class_max in zip(exponentials, class_maxima):
                size = exponential.shape[2]
                # exp(s - n_a) = exp(s - max_c) * exp(max_c - n_a), with max_c <= n_a on negative classes
                class_factor = torch.exp(class_max - negative_logsumexp).mul_(negative_scale)
                class_factor = torch.where(own_mask, 0.0, class_factor)
                pair_gradient = exponential.mul_(class_factor.unsqueeze(2))
                own_index = own_class.view(count, 1, 1).expand(count, 1, size)
                own_gradient = positive_gradient[:, offset : offset + size].neg().unsqueeze(1)
                pair_gradient.scatter_(1, own_index, own_gradient)
                pair_gradients.append(pair_gradient.view(count, -1))
                offset += size
            ctx.save_for_backward(*pair_gradients, *queues)
            ctx.temperature = temperature
            ctx.bank_count = len(queues)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:
        saved = ctx.saved_tensors
        pair_gradients, queues = saved[: ctx.bank_count], saved[ctx.bank_count :]
        grad_anchors = torch.mm(pair_gradients[0], queues[0])
        for pair_gradient, queue in zip(pair_gradients[1:], queues[1:]):
            grad_anchors.addmm_(pair_gradient, queue)
        grad_anchors = grad_anchors.mul_(grad_output / ctx.temperature)
        return (grad_anchors, None, None, None, None) + (None,) * (2 * ctx.bank_count)


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
        ignore_index: int = 255,
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
