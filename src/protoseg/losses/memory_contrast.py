"""The memory InfoNCE shared by ContrastiveSeg's pixel memory and RCA's region memory.

Anchors (pixels, regions) are contrasted against class-structured memory banks ``(C, S, D)``: the
filled slots of the anchor's class are its positives, those of every other class its negatives
(ContrastiveSeg Sec. 3.4 with tau = base_tau = 0.07; RCA eq. 4 with cosine similarity). Computed with
its closed-form gradient, so autograd keeps one (M, C * S) matrix per bank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def anchor_weights(
    positive_count: torch.Tensor, has_positive: torch.Tensor, temperature: float, base_temperature: float
) -> torch.Tensor:
    """Weight ``w_a`` (M,) of each anchor's summed pair losses in the final loss: ``tau / base_tau``
    over its positive count and over the number of anchors with a positive; 0 for the others."""
    weight = (temperature / base_temperature) / positive_count.clamp_min(1)
    return torch.where(has_positive, weight, 0.0) / has_positive.sum().clamp_min(1)


def memory_contrast(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    banks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    anchor_valid: torch.Tensor | None = None,
    anchor_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`supervised_contrast` of ``anchors`` (M, D) against class-structured memory banks.

    The memory InfoNCE of ContrastiveSeg's pixel memory and of RCA's region memory:
    ``L_a = tau / base_tau * mean_{p in P_a} softplus(logsumexp_{n in N_a} s_an - s_ap)``, s = <a, x> / tau,
    positives P_a = the filled slots of the anchor's class, negatives N_a = the filled slots of every
    other class. The loss is the mean of ``L_a`` over the anchors with a positive, or, with
    ``anchor_scale`` (M,), the sum ``sum_a anchor_scale[a] * L_a`` (RCA's mixup weights its queries).

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

    if anchor_scale is not None and anchor_scale.shape != anchor_labels.shape:
        raise ValueError(
            f"anchor_scale must be {tuple(anchor_labels.shape)}, got {tuple(anchor_scale.shape)}"
        )

    compute_dtype = torch.promote_types(anchors.dtype, torch.float32)
    if anchor_valid is None:
        anchor_valid = torch.ones_like(anchor_labels, dtype=torch.bool)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors = anchors.to(compute_dtype)
        if anchor_scale is not None:
            anchor_scale = anchor_scale.detach().to(compute_dtype)
        bank_tensors = [tensor for queue, valid in banks for tensor in (queue.to(compute_dtype), valid)]
        return _MemoryContrast.apply(
            anchors, anchor_labels, anchor_valid, anchor_scale, temperature, base_temperature, *bank_tensors
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
        anchor_scale: torch.Tensor | None,
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
        if anchor_scale is None:
            weight = anchor_weights(positive_count, positive_count > 0, temperature, base_temperature)
        else:
            weight = (temperature / base_temperature) / positive_count.clamp_min(1) * anchor_scale
            weight = torch.where(positive_count > 0, weight, 0.0)
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
        return (grad_anchors, None, None, None, None, None) + (None,) * (2 * ctx.bank_count)
