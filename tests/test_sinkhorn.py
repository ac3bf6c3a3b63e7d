import math

import pytest
import torch

from protoseg.ops import segmented_sinkhorn, sinkhorn


def swav_reference(scores: torch.Tensor, epsilon: float, num_iters: int) -> torch.Tensor:
    """The released code's plain-domain Sinkhorn (K x N layout), in float64; scores (N, K)."""
    q = torch.exp(scores.double() / epsilon).t().clone()
    num_columns, num_rows = q.shape
    q /= q.sum()
    for _ in range(num_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_columns
        q /= q.sum(dim=0, keepdim=True)
        q /= num_rows
    return (q * num_rows).t()


def python_log_reference(scores: list[list[float]], epsilon: float, num_iters: int) -> list[list[float]]:
    """Log-domain Sinkhorn with Python floats and loops only (column then row normalisation)."""

    def log_sum_exp(values: list[float]) -> float:
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values))

    num_rows, num_columns = len(scores), len(scores[0])
    log_q = [[s / epsilon for s in row] for row in scores]
    for _ in range(num_iters):
        for k in range(num_columns):
            shift = log_sum_exp([log_q[n][k] for n in range(num_rows)]) - math.log(num_rows / num_columns)
            for n in range(num_rows):
                log_q[n][k] -= shift
        for n in range(num_rows):
            shift = log_sum_exp(log_q[n])
            log_q[n] = [v - shift for v in log_q[n]]
    return [[math.exp(v) for v in row] for row in log_q]


def test_matches_released_sinkhorn_float64_and_float32():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(37, 5, generator=generator, dtype=torch.float64) * 0.6
    expected = swav_reference(scores, 0.05, 3)
    exact = sinkhorn(scores, epsilon=0.05, num_iters=3)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, expected, rtol=1e-10, atol=1e-12)
    single = sinkhorn(scores.float(), epsilon=0.05, num_iters=3)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), expected, rtol=1e-4, atol=1e-5)


def test_rows_exact_columns_approximate_then_converged():
    generator = torch.Generator().manual_seed(2)
    scores = torch.rand(60, 4, generator=generator, dtype=torch.float64)
    q = sinkhorn(scores, epsilon=0.1, num_iters=3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(60, dtype=torch.float64), rtol=0, atol=1e-12)
    # After 3 iterations the columns are only close to N / K = 15 ...
    assert (q.sum(dim=0) - 15).abs().max() < 3
    # ... and they converge to it with more iterations.
    converged = sinkhorn(scores, epsilon=0.1, num_iters=200)
    torch.testing.assert_close(
        converged.sum(dim=0), torch.full((4,), 15.0, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(60, dtype=torch.float64), atol=1e-12, rtol=0)


def test_extreme_scores_small_epsilon_stay_finite_and_match_python_reference():
    generator = torch.Generator().manual_seed(3)
    scores = (torch.rand(12, 4, generator=generator) * 100 - 50).float()
    scores[0] = torch.tensor([50.0, -50.0, -50.0, -50.0])
    scores[:, 3] = -50.0  # a column no row prefers: its mass comes from exp(-10000) in float
    q = sinkhorn(scores, epsilon=0.01, num_iters=3)
    assert torch.isfinite(q).all()
    expected = torch.tensor(python_log_reference(scores.double().tolist(), 0.01, 3), dtype=torch.float64)
    torch.testing.assert_close(q.double(), expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(dim=0).double(), expected.sum(dim=0), atol=5e-3, rtol=0)


def test_masked_rows_are_zero_and_do_not_take_part():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    mask = torch.rand(20, generator=generator) < 0.6
    mask[0] = True
    q = sinkhorn(scores, epsilon=0.05, num_iters=3, mask=mask)
    assert (q[~mask] == 0).all()
    expected = swav_reference(scores[mask], 0.05, 3)
    torch.testing.assert_close(q[mask], expected, rtol=1e-10, atol=1e-12)
    # Masked rows may hold anything, even non-finite values.
    poisoned = scores.clone()
    poisoned[~mask] = float("inf")
    torch.testing.assert_close(sinkhorn(poisoned, epsilon=0.05, num_iters=3, mask=mask), q)


def test_batch_entry_without_valid_rows_gives_zeros_not_nan():
    scores = torch.randn(3, 8, 4)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1] = False
    q = sinkhorn(scores, epsilon=0.05, num_iters=3, mask=mask)
    assert torch.isfinite(q).all()
    assert (q[1] == 0).all()
    torch.testing.assert_close(q[0], sinkhorn(scores[0]))
    torch.testing.assert_close(q[2], sinkhorn(scores[2]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_is_upcast_to_float32(dtype):
    scores = (torch.rand(16, 5) * 2 - 1).to(dtype)  # exp(1 / 0.05) overflows float16
    q = sinkhorn(scores, epsilon=0.05, num_iters=3)
    assert q.dtype == torch.float32
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, sinkhorn(scores.float(), epsilon=0.05, num_iters=3))


def test_batched_call_equals_one_call_per_class():
    generator = torch.Generator().manual_seed(5)
    scores = torch.randn(4, 2, 11, 3, generator=generator)
    mask = torch.rand(4, 2, 11, generator=generator) < 0.7
    batched = sinkhorn(scores, epsilon=0.05, num_iters=3, mask=mask)
    for i in range(4):
        for j in range(2):
            single = sinkhorn(scores[i, j], epsilon=0.05, num_iters=3, mask=mask[i, j])
            torch.testing.assert_close(batched[i, j], single, rtol=1e-6, atol=1e-7)


def test_segmented_equals_separate_calls_per_segment():
    generator = torch.Generator().manual_seed(6)
    num_segments = 5
    scores = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    segment_ids = torch.randint(0, num_segments, (50,), generator=generator)
    segment_ids[segment_ids == 3] = 1  # segment 3 is empty
    segment_ids[:4] = torch.tensor([255, -1, num_segments, 255])  # outside [0, S): ignored
    mask = torch.rand(50, generator=generator) < 0.9
    q = segmented_sinkhorn(scores, segment_ids, num_segments, epsilon=0.05, num_iters=3, mask=mask)
    assert q.dtype == torch.float64
    ignored = (segment_ids < 0) | (segment_ids >= num_segments) | ~mask
    assert (q[ignored] == 0).all()
    for segment in range(num_segments):
        rows = [n for n in range(50) if segment_ids[n] == segment and mask[n]]
        if not rows:
            continue
        expected = swav_reference(scores[rows], 0.05, 3)
        torch.testing.assert_close(q[rows], expected, rtol=1e-10, atol=1e-12)


def test_segmented_extreme_scores_match_python_reference():
    generator = torch.Generator().manual_seed(7)
    scores = torch.rand(30, 3, generator=generator) * 100 - 50
    scores[:, 2] = -50.0
    segment_ids = torch.arange(30) % 2
    q = segmented_sinkhorn(scores, segment_ids, 2, epsilon=0.01, num_iters=3)
    assert torch.isfinite(q).all()
    for segment in range(2):
        rows = [n for n in range(30) if segment_ids[n] == segment]
        expected = python_log_reference(scores[rows].double().tolist(), 0.01, 3)
        torch.testing.assert_close(
            q[rows].double(), torch.tensor(expected, dtype=torch.float64), atol=2e-3, rtol=0
        )


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(3, 2), epsilon=0.0)
    with pytest.raises(ValueError, match="num_iters"):
        sinkhorn(torch.zeros(3, 2), num_iters=0)
    with pytest.raises(ValueError, match="mask shape"):
        sinkhorn(torch.zeros(3, 2), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="segment_ids"):
        segmented_sinkhorn(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), 2)
