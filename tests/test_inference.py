import torch
import torch.nn.functional as F

from protoseg.ops.inference import predict_probabilities, sliding_window_logits


def pixelwise(images):
    """A per-pixel 'model': its logits at a pixel depend only on that pixel, so sliding == whole."""
    return torch.cat([images[:, :1] * 2, images[:, 1:2] - images[:, 2:3], -images[:, :1]], dim=1)


def test_sliding_window_equals_whole_for_pixelwise_model():
    images = torch.randn(2, 3, 37, 53)
    whole = pixelwise(images)
    slid = sliding_window_logits(pixelwise, images, 3, window=(16, 20), stride=(10, 13))
    torch.testing.assert_close(slid, whole)


def test_sliding_window_pads_small_images():
    images = torch.randn(1, 3, 8, 9)
    slid = sliding_window_logits(pixelwise, images, 3, window=(16, 16), stride=(8, 8))
    torch.testing.assert_close(slid, pixelwise(images))


def test_sliding_window_average_counts_overlaps():
    calls = []

    def constant(crop):
        calls.append(crop.shape)
        return torch.ones(crop.shape[0], 2, *crop.shape[-2:]) * len(calls)

    images = torch.zeros(1, 3, 10, 10)
    out = sliding_window_logits(constant, images, 2, window=(6, 10), stride=(4, 10))
    # windows at rows 0..5 (value 1) and 4..9 (value 2): overlap rows 4,5 average to 1.5
    assert len(calls) == 2
    assert torch.allclose(out[0, 0, :4], torch.tensor(1.0))
    assert torch.allclose(out[0, 0, 4:6], torch.tensor(1.5))
    assert torch.allclose(out[0, 0, 6:], torch.tensor(2.0))


def test_multiscale_flip_reference():
    images = torch.randn(1, 3, 20, 24)

    def model(x):  # not flip-invariant: depends on the column index
        columns = torch.linspace(0, 1, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], x.shape[-1])
        return torch.cat([x[:, :1] + columns, x[:, 1:2]], dim=1)

    out = predict_probabilities(model, images, 2, scales=(0.5, 1.0), flip=True)
    reference = torch.zeros(1, 2, 20, 24)
    for scale in (0.5, 1.0):
        scaled = (
            F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            if scale != 1
            else images
        )
        for flipped in (False, True):
            view = scaled.flip(-1) if flipped else scaled
            logits = model(view)
            if flipped:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=(20, 24), mode="bilinear", align_corners=False)
            reference += logits.softmax(1)
    torch.testing.assert_close(out, reference)
    assert torch.allclose(out.sum(1), torch.tensor(4.0))
