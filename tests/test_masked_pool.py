import pytest
import torch

from protoseg.ops import masked_average_pool


def reference_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Brute-force float64 eq. 2: loops over images, classes and pixels."""
    batch, dim, height, width = features.shape
    classes = masks.shape[1]
    result = torch.zeros(batch, classes, dim, dtype=torch.float64)
    for b in range(batch):
        for c in range(classes):
            total = torch.zeros(dim, dtype=torch.float64)
            weight = 0.0
            for y in range(height):
                for x in range(width):
                    m = float(masks[b, c, y, x])
                    total += m * features[b, :, y, x].double()
                    weight += m
            if weight > 0:
                result[b, c] = total / weight
    return result


def test_binary_masks_match_reference_and_empty_mask_gives_zero():
    features = torch.randn(2, 5, 4, 6)
    masks = (torch.rand(2, 3, 4, 6) > 0.5).float()
    masks[1, 2] = 0  # an empty mask
    pooled = masked_average_pool(features, masks)
    assert pooled.shape == (2, 3, 5)
    torch.testing.assert_close(pooled.double(), reference_pool(features, masks), rtol=1e-5, atol=1e-6)
    assert torch.all(pooled[1, 2] == 0)


def test_soft_masks_match_reference():
    features = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    masks = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(masked_average_pool(features, masks), reference_pool(features, masks))


def test_empty_mask_has_finite_zero_gradient():
    features = torch.randn(1, 3, 4, 4, requires_grad=True)
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :2] = 1
    pooled = masked_average_pool(features, masks)
    assert torch.isfinite(pooled).all()
    pooled[0, 1].sum().backward()  # only the empty mask's output
    assert torch.isfinite(features.grad).all()
    assert torch.all(features.grad == 0)


def test_gradient_of_a_mask_mean_is_uniform_inside_the_mask():
    features = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    masks = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    masks[0, 0, 0, :] = 1
    masked_average_pool(features, masks)[0, 0, 0].backward()
    expected = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    expected[0, 0, 0, :] = 1 / 3
    torch.testing.assert_close(features.grad, expected)


@pytest.mark.parametrize(
    ("feature_shape", "mask_shape"),
    [((1, 3, 4, 4), (1, 2, 4, 5)), ((2, 3, 4, 4), (1, 2, 4, 4)), ((3, 4, 4), (1, 2, 4, 4))],
)
def test_mismatched_shapes_raise(feature_shape, mask_shape):
    with pytest.raises(ValueError, match="masked_average_pool"):
        masked_average_pool(torch.randn(feature_shape), torch.rand(mask_shape))
