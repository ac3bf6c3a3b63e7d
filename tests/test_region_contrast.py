import math

import pytest
import torch

from protoseg.losses import RegionContrastLoss, sample_beta
from protoseg.prototypes import RegionMemory

TAU = 0.07


def filled_memory(classes: int, dim: int, size: int, fills: list[int], seed: int = 0) -> RegionMemory:
    generator = torch.Generator().manual_seed(seed)
    memory = RegionMemory(classes, dim, size=size).double()
    for c, fill in enumerate(fills):
        if fill:
            embeddings = torch.randn(fill, dim, generator=generator, dtype=torch.float64)
            labels = torch.full((fill,), c)
            memory.enqueue(embeddings, labels, torch.ones(fill), 0.5)
    return memory


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def reference_nce(f: torch.Tensor, label: int, memory: RegionMemory) -> float | None:
    """Eq. 4 by loops over slots: mean over positives of -log(e+ / (e+ + sum e-))."""
    positives, negatives = [], []
    for c in range(memory.num_classes):
        for slot in range(int(memory.count[c])):
            similarity = cosine(f, memory.memory[c, slot]) / TAU
            (positives if c == label else negatives).append(similarity)
    if not positives:
        return None
    negative_sum = sum(math.exp(s) for s in negatives)
    return sum(-math.log(math.exp(s) / (math.exp(s) + negative_sum)) for s in positives) / len(positives)


def test_contrast_matches_brute_force_infonce():
    memory = filled_memory(3, 5, size=6, fills=[6, 3, 0])
    embeddings = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 1])
    valid = torch.tensor([True, True, True, True, False, True])
    result = RegionContrastLoss(TAU, mixup_alpha=0.0)(embeddings, labels, valid, memory)
    terms = [reference_nce(embeddings[r], int(labels[r]), memory) for r in range(6) if valid[r]]
    terms = [t for t in terms if t is not None]  # class 2 has an empty memory
    expected = sum(terms) / len(terms)
    assert result["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert result["contrast"].item() == pytest.approx(expected, rel=1e-6)


def test_autocast_does_not_lower_the_precision_of_the_contrast():
    memory = filled_memory(3, 16, size=8, fills=[8, 5, 2]).float()
    embeddings = torch.randn(7, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    valid = torch.ones(7, dtype=torch.bool)
    loss = RegionContrastLoss(TAU, mixup_alpha=8.0)
    plain = loss(embeddings, labels, valid, memory, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would run the similarity einsums in bfloat16
        autocast = loss(embeddings, labels, valid, memory, torch.Generator().manual_seed(0))
    for name in ("loss", "contrast", "mixup"):
        assert autocast[name].dtype == torch.float32
        torch.testing.assert_close(autocast[name], plain[name], rtol=1e-5, atol=1e-6)


def test_mixup_matches_brute_force_with_the_drawn_partners_and_weights():
    memory = filled_memory(4, 6, size=5, fills=[5, 4, 2, 0])
    embeddings = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 3, 1, 2, 0])
    valid = torch.tensor([True, True, True, True, True, True, False, True])
    result = RegionContrastLoss(TAU, mixup_alpha=8.0)(
        embeddings, labels, valid, memory, generator=torch.Generator().manual_seed(1)
    )
    partner, weight = result["partner"], result["mix_weight"]
    total, counted = 0.0, 0
    for r in range(8):
        if not valid[r] or memory.count[labels[r]] == 0:
            continue
        p, w = int(partner[r]), float(weight[r])
        # the partner is a counted region of another class
        assert valid[p] and labels[p] != labels[r] and memory.count[labels[p]] > 0
        assert 0 < w < 1
        mixed = w * embeddings[r].detach() + (1 - w) * embeddings[p].detach()
        own = reference_nce(mixed, int(labels[r]), memory)
        other = reference_nce(mixed, int(labels[p]), memory)
        total += w * own + (1 - w) * other
        counted += 1
    assert result["mixup"].item() == pytest.approx(total / counted, rel=1e-6)
    result["loss"].backward()
    assert torch.isfinite(embeddings.grad).all()
    assert torch.all(embeddings.grad[6] == 0)  # invalid, and never a partner
    assert torch.all(embeddings.grad[4] == 0)  # class 3 has no memory: neither counted nor a partner


def test_partner_is_uniform_among_eligible_regions():
    memory = filled_memory(2, 4, size=3, fills=[3, 3])
    embeddings = torch.randn(4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    valid = torch.ones(4, dtype=torch.bool)
    loss = RegionContrastLoss(TAU)
    generator = torch.Generator().manual_seed(2)
    counts = torch.zeros(4)
    draws = 450
    for _ in range(draws):
        counts[loss(embeddings, labels, valid, memory, generator=generator)["partner"][0]] += 1
    assert counts[0] == 0
    # binomial(450, 1/3): sd ~ 10
    assert torch.all((counts[1:] - draws / 3).abs() < 45), counts


def test_region_without_partner_uses_plain_contrast():
    memory = filled_memory(2, 4, size=3, fills=[3, 3])
    embeddings = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([1, 1, 1])
    valid = torch.ones(3, dtype=torch.bool)
    result = RegionContrastLoss(TAU)(embeddings, labels, valid, memory)
    assert torch.all(result["mix_weight"] == 1)
    torch.testing.assert_close(result["mixup"], result["contrast"])


def test_empty_memory_and_missing_negatives_give_zero_loss_and_finite_gradients():
    embeddings = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    valid = torch.ones(3, dtype=torch.bool)
    empty = RegionMemory(2, 4, size=3)
    result = RegionContrastLoss()(embeddings, labels, valid, empty)
    assert result["loss"].item() == 0
    result["loss"].backward()
    assert torch.all(embeddings.grad == 0)

    only_class_zero = RegionMemory(2, 4, size=3)
    only_class_zero.enqueue(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), torch.ones(2), 0.5)
    embeddings.grad = None
    result = RegionContrastLoss(mixup_alpha=0.0)(embeddings, labels, valid, only_class_zero)
    # no negative at all: -log(e+ / e+) = 0
    assert result["loss"].item() == pytest.approx(0.0, abs=1e-6)
    result["loss"].backward()
    assert torch.isfinite(embeddings.grad).all()


def test_seeded_draws_are_reproducible():
    memory = filled_memory(3, 4, size=4, fills=[4, 4, 4])
    embeddings, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    valid = torch.ones(6, dtype=torch.bool)
    loss = RegionContrastLoss()
    first = loss(embeddings, labels, valid, memory, generator=torch.Generator().manual_seed(5))
    second = loss(embeddings, labels, valid, memory, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first["partner"], second["partner"])
    assert first["mixup"].item() == second["mixup"].item()


def beta_cdf(x: float, alpha: float) -> float:
    if alpha == 0.5:  # arcsine law
        return 2 / math.pi * math.asin(math.sqrt(x))
    n = int(2 * alpha) - 1  # integer alpha: I_x(a, a) = P(Binomial(2a - 1, x) >= a)
    return sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(int(alpha), n + 1))


@pytest.mark.parametrize("alpha", [8.0, 0.5, 2.0])
def test_beta_draws_follow_the_beta_law(alpha):
    count = 4000
    draws = sample_beta(alpha, count, generator=torch.Generator().manual_seed(0)).double()
    assert torch.all((draws >= 0) & (draws <= 1))
    ordered = draws.sort().values.tolist()
    distance = max(
        max(abs((i + 1) / count - beta_cdf(x, alpha)), abs(i / count - beta_cdf(x, alpha)))
        for i, x in enumerate(ordered)
    )
    assert distance < 1.63 / math.sqrt(count)  # Kolmogorov-Smirnov at the 1% level
    assert draws.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)


def test_bad_inputs_raise():
    memory = RegionMemory(2, 4, size=3)
    with pytest.raises(ValueError, match="region_embeddings"):
        RegionContrastLoss()(torch.randn(3, 5), torch.zeros(3).long(), torch.ones(3).bool(), memory)
    with pytest.raises(ValueError, match="temperature"):
        RegionContrastLoss(temperature=0.0)
