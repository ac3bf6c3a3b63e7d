import math

import pytest
import torch

from protoseg.models.aggregation import SemanticAggregation


def reference_paper(features: torch.Tensor, prototypes: torch.Tensor, valid: list[bool], scale: float):
    """Loops over pixels: S = softmax over valid prototypes of scale * f.q, F' = sum S q; concat(F, F')."""
    batch, dim, height, width = features.shape
    context = torch.zeros(batch, dim, height, width, dtype=torch.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                f = features[b, :, y, x].double()
                logits = [scale * float(f @ q.double()) if ok else None for q, ok in zip(prototypes, valid)]
                present = [value for value in logits if value is not None]
                if not present:
                    continue
                top = max(present)
                weights = [math.exp(value - top) if value is not None else 0.0 for value in logits]
                norm = sum(weights)
                for weight, q in zip(weights, prototypes):
                    context[b, :, y, x] += weight / norm * q.double()
    return torch.cat([features.double(), context], dim=1)


def test_paper_mode_matches_softmax_attention_reference():
    module = SemanticAggregation(dim=4, num_classes=3, num_prototypes=2, attention_scale=0.5).double()
    centroids = torch.randn(3, 2, 4, dtype=torch.float64)
    module.set_prototypes(centroids)
    features = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    output = module(features)
    assert output.shape == (2, 8, 3, 5) and module.out_channels == 8
    expected = reference_paper(features, centroids.reshape(6, 4), [True] * 6, 0.5)
    torch.testing.assert_close(output, expected)


def test_invalid_prototypes_take_no_part_and_none_valid_gives_zero_context():
    module = SemanticAggregation(dim=3, num_classes=3, num_prototypes=2).double()
    features = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    output = module(features)  # before any set_prototypes
    torch.testing.assert_close(output, torch.cat([features, torch.zeros_like(features)], 1))

    centroids = torch.randn(3, 2, 3, dtype=torch.float64)
    module.set_prototypes(centroids, valid=torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(module(features), torch.cat([features, torch.zeros_like(features)], 1))

    module.set_prototypes(centroids, valid=torch.tensor([True, False, True]))
    valid = [True, True, False, False, True, True]
    expected = reference_paper(features, centroids.reshape(6, 3), valid, 1.0)
    torch.testing.assert_close(module(features), expected)


def test_released_mode_matches_projection_reference():
    torch.manual_seed(0)
    module = SemanticAggregation(dim=3, num_classes=4, num_prototypes=2, mode="released").double()
    centroids = torch.randn(4, 2, 3, dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    module.set_prototypes(centroids, valid=valid)
    features = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    output = module(features)
    assert output.shape == (2, 3, 2, 3) and module.out_channels == 3

    def conv(layer, vector):
        return layer.weight[:, :, 0, 0] @ vector + layer.bias

    prototypes = [centroids.reshape(8, 3)[j] for j in range(8) if valid.repeat_interleave(2)[j]]
    expected = torch.zeros_like(output)
    with torch.no_grad():
        fill_released_reference(module, features, prototypes, conv, expected)
    torch.testing.assert_close(output, expected)


def fill_released_reference(module, features, prototypes, conv, expected) -> None:
    """Loops over pixels and prototypes: q.k (no softmax) * C / K weights v; aggregate; project."""
    for b in range(2):
        for y in range(2):
            for x in range(3):
                f = features[b, :, y, x]
                query = conv(module.query, f)
                context = torch.zeros(3, dtype=torch.float64)
                for q in prototypes:
                    key, value = module.key(q), module.value(q)
                    context += float(query @ key) * 4 / 2 * value
                expected[b, :, y, x] = conv(module.project, torch.cat([f, conv(module.aggregate, context)]))


def test_gradient_reaches_features_not_prototypes_and_prototypes_are_saved():
    module = SemanticAggregation(dim=4, num_classes=2, num_prototypes=3)
    module.set_prototypes(torch.randn(2, 3, 4))
    features = torch.randn(1, 4, 2, 2, requires_grad=True)
    module(features)[:, 4:].sum().backward()  # through the context only
    assert features.grad.abs().sum() > 0
    state = module.state_dict()
    assert "prototypes" in state and "prototype_valid" in state
    assert not module.prototypes.requires_grad


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        SemanticAggregation(4, 2, mode="other")
    module = SemanticAggregation(4, 2, num_prototypes=3)
    with pytest.raises(ValueError, match="centroids"):
        module.set_prototypes(torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="valid"):
        module.set_prototypes(torch.randn(2, 3, 4), valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="features"):
        module(torch.randn(1, 5, 2, 2))
