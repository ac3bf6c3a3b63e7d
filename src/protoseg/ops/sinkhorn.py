"""Sinkhorn-Knopp equipartition in the log domain: dense (batched) and segmented.

Both functions solve the entropic transport problem of SwAV / ProtoSeg (the relaxed
within-class clustering, Eq. 9-10 of the ProtoSeg paper): given scores ``S`` (N rows =
pixels, K columns = prototypes), find

    Q = diag(u) exp(S / eps) diag(v)

whose rows sum to 1 (every pixel is fully assigned) and whose columns each carry N / K
(the prototypes share the pixels equally). The scalings u, v are found by alternately
normalising columns and rows, a fixed number of times. As in the released code (and SwAV),
each iteration normalises the columns first and the rows LAST, so after any finite number of
iterations **the row marginal is exact** (every valid row sums to 1) and the column marginal
is approximate (close to N / K, exact only at convergence).

Everything runs on ``log Q`` with ``logsumexp`` (no ``exp(S / eps)`` that overflows for
eps = 0.01 or extreme scores) in float32, or float64 for float64 input; half and bfloat16
inputs are upcast (``exp(1 / 0.05)`` already overflows float16).
"""

from __future__ import annotations

import math

import torch

__all__ = ["sinkhorn", "segmented_sinkhorn"]


def _finite_or_zero(values: torch.Tensor) -> torch.Tensor:
    """Replace -inf (the log-sum of an empty set) by 0 so that subtracting it never gives NaN."""
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_arguments(epsilon: float, num_iters: int) -> None:
    if not epsilon > 0:
        raise ValueError(f"sinkhorn epsilon must be > 0, got {epsilon}")
    if num_iters < 1:
        raise ValueError(f"sinkhorn num_iters must be >= 1, got {num_iters}")


def sinkhorn(
    scores: torch.Tensor, epsilon: float = 0.05, num_iters: int = 3, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Equipartitioned soft assignment of N rows to K columns, batched over leading dims.

    Computes ``Q = diag(u) exp(S / eps) diag(v)`` with ``num_iters`` rounds of (column, row)
    normalisation; the last normalisation is the row one, so every valid row of ``Q`` sums
    to 1 exactly and every column carries approximately ``n_valid / K``.

    Args:
        scores: ``(..., N, K)`` similarities; each leading index is an independent problem
            (e.g. one per class), so one call clusters all of them.
        epsilon: entropic regularisation (temperature of ``exp(S / eps)``), > 0.
        num_iters: number of (column, row) normalisation rounds, >= 1.
        mask: optional boolean ``(..., N)``; False rows take no part (their row of ``Q`` is 0
            and they do not count in ``n_valid``). A problem with no valid row gives all zeros.

    Returns:
        ``Q`` with the shape of ``scores``, float64 for float64 input, float32 otherwise.
    """
    _check_arguments(epsilon, num_iters)
    if scores.dim() < 2:
        raise ValueError(f"sinkhorn scores must have shape (..., N, K), got {tuple(scores.shape)}")
    num_rows, num_columns = scores.shape[-2:]
    log_q = scores.to(_working_dtype(scores.dtype)) / epsilon
    if mask is None:
        log_column_mass = torch.full_like(log_q[..., :1, :1], math.log(num_rows / num_columns))
    else:
        if mask.shape != scores.shape[:-1]:
            raise ValueError(
                f"sinkhorn mask shape {tuple(mask.shape)} must equal scores.shape[:-1] "
                f"= {tuple(scores.shape[:-1])}"
            )
        mask = mask.bool()
        log_q = log_q.masked_fill(~mask.unsqueeze(-1), -math.inf)
        num_valid = mask.sum(dim=-1, keepdim=True).unsqueeze(-1).to(log_q.dtype)
        log_column_mass = _finite_or_zero(torch.log(num_valid / num_columns))
    for _ in range(num_iters):
        log_q = log_q - _finite_or_zero(torch.logsumexp(log_q, dim=-2, keepdim=True)) + log_column_mass
        log_q = log_q - _finite_or_zero(torch.logsumexp(log_q, dim=-1, keepdim=True))
    # Rows that are entirely -inf (masked) exponentiate to exactly 0.
    return log_q.exp()


def segmented_sinkhorn(
    scores: torch.Tensor,
    segment_ids: torch.Tensor,
    num_segments: int,
    epsilon: float = 0.05,
    num_iters: int = 3,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Independent Sinkhorn problems on groups of rows of one ``(N, K)`` matrix, in one pass.

    Row n belongs to problem ``segment_ids[n]``; the result equals calling :func:`sinkhorn`
    separately on the rows of each segment (rows sum to 1 exactly, the columns of segment s
    carry approximately ``n_s / K``), but without a Python loop over segments or any host
    synchronisation: the column normalisation is a segmented log-sum-exp (``scatter_reduce_``
    max + ``index_add_`` of exponentials into ``(num_segments, K)``), the row normalisation is
    per row. Cost O(N * K) per iteration plus O(num_segments * K).

    Args:
        scores: ``(N, K)`` similarities of each row to its own segment's K columns.
        segment_ids: ``(N,)`` int64 segment (e.g. class) of each row.
        num_segments: number of segments S; ids outside ``[0, S)`` are treated as masked rows.
        epsilon, num_iters: as in :func:`sinkhorn`.
        mask: optional boolean ``(N,)`` of valid rows (False rows get a zero row of ``Q``).

    Returns:
        ``Q`` ``(N, K)``, float64 for float64 input, float32 otherwise.
    """
    _check_arguments(epsilon, num_iters)
    if scores.dim() != 2 or segment_ids.shape != scores.shape[:1]:
        raise ValueError(
            f"segmented_sinkhorn needs scores (N, K) and segment_ids (N,), got {tuple(scores.shape)} "
            f"and {tuple(segment_ids.shape)}"
        )
    num_columns = scores.shape[1]
    valid = (segment_ids >= 0) & (segment_ids < num_segments)
    if mask is not None:
        valid = valid & mask.bool()
    # Invalid rows go to an extra "dump" segment so that no index is out of range.
    segments = torch.where(valid, segment_ids, torch.full_like(segment_ids, num_segments))
    # Work on the transposed (K, N) layout: the per-row reductions over the K columns become
    # reductions over the outer dimension, which vectorise across rows (several times faster
    # than reducing a last dimension of size ~10).
    log_q = (scores.to(_working_dtype(scores.dtype)) / epsilon).t().contiguous()
    log_q = log_q.masked_fill(~valid.unsqueeze(0), -math.inf)

    rows_per_segment = torch.zeros(num_segments + 1, dtype=log_q.dtype, device=log_q.device)
    rows_per_segment.index_add_(0, segments, torch.ones_like(log_q[0]))
    log_column_mass = _finite_or_zero(torch.log(rows_per_segment / num_columns))
    column_index = segments.unsqueeze(0).expand_as(log_q)
    for _ in range(num_iters):
        column_max = log_q.new_full((num_columns, num_segments + 1), -math.inf)
        column_max.scatter_reduce_(1, column_index, log_q, reduce="amax", include_self=True)
        column_max = _finite_or_zero(column_max)
        shifted = (log_q - column_max.index_select(1, segments)).exp_()
        column_sum = torch.zeros_like(column_max).index_add_(1, segments, shifted)
        column_log_sum = _finite_or_zero(column_max + column_sum.log_())
        log_q = log_q - (column_log_sum - log_column_mass).index_select(1, segments)
        log_q = log_q - _finite_or_zero(_log_sum_exp_over_rows(log_q))
    return log_q.exp_().t().contiguous()


def _log_sum_exp_over_rows(values: torch.Tensor) -> torch.Tensor:
    """``logsumexp(values, dim=0, keepdim=True)`` with -inf (not NaN) for all -inf columns."""
    top = _finite_or_zero(values.amax(dim=0, keepdim=True))
    return (values - top).exp_().sum(dim=0, keepdim=True).log_().add_(top)
