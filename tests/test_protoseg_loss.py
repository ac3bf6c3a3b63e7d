import math

import pytest
import torch
import torch.nn.functional as F

from protoseg.losses import ProtoSegLoss, pixel_prototype_contrast_loss, pixel_prototype_distance_loss


def reference_ppc(logits: torch.Tensor, targets: list[int], temperature: float) -> float:
    losses = []
    for n, t in enumerate(targets):
        if not 0 <= t < logits.shape[1]:
            continue
        row = [float(v) / temperature for v in logits[n].double()]
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        losses.append(log_norm - row[t])
    return sum(losses) / len(losses)


def reference_ppd(logits: torch.Tensor, targets: list[int]) -> float:
    losses = [(1 - float(logits[n, t])) ** 2 for n, t in enumerate(targets) if 0 <= t < logits.shape[1]]
    return sum(losses) / len(losses)


def reference_ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Bilinear upsampling via F.interpolate, then the per-pixel CE with loops, float64."""
    upsampled = F.interpolate(logits.double(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    losses = []
    batch, _, height, width = upsampled.shape
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                label = int(target[b, y, x])
                if label == 255:
                    continue
                row = upsampled[b, :, y, x].tolist()
                top = max(row)
                losses.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[label])
    return sum(losses) / len(losses)


def random_outputs(num_classes: int = 3, num_prototypes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 3, 4, generator=generator, requires_grad=True)
    proto_logits = (
        torch.rand(24, num_classes * num_prototypes, generator=generator) * 2 - 1
    ).requires_grad_()
    proto_targets = torch.randint(0, num_classes * num_prototypes, (24,), generator=generator)
    proto_targets[:3] = -1
    target = torch.randint(0, num_classes, (2, 6, 8), generator=generator)
    target[:, 0] = 255
    return {"logits": logits, "proto_logits": proto_logits, "proto_targets": proto_targets}, target


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_terms_match_references_and_are_weighted(temperature):
    outputs, target = random_outputs()
    criterion = ProtoSegLoss(proto_contrast_weight=0.01, proto_distance_weight=0.001, temperature=temperature)
    losses = criterion(outputs, target)
    targets = outputs["proto_targets"].tolist()
    assert math.isclose(float(losses["ce"]), reference_ce(outputs["logits"].detach(), target), rel_tol=1e-5)
    expected_ppc = reference_ppc(outputs["proto_logits"].detach(), targets, temperature)
    assert math.isclose(float(losses["proto_contrast"]), expected_ppc, rel_tol=1e-5)
    assert math.isclose(
        float(losses["proto_distance"]),
        reference_ppd(outputs["proto_logits"].detach(), targets),
        rel_tol=1e-5,
    )
    total = (
        float(losses["ce"]) + 0.01 * float(losses["proto_contrast"]) + 0.001 * float(losses["proto_distance"])
    )
    assert math.isclose(float(losses["loss"].detach()), total, rel_tol=1e-6)
    losses["loss"].backward()
    assert outputs["proto_logits"].grad[:3].abs().sum() == 0  # ignored pixels get no gradient
    assert outputs["proto_logits"].grad[3:].abs().sum() > 0


def test_target_255_is_a_valid_prototype_when_there_are_more_than_255():
    generator = torch.Generator().manual_seed(1)
    proto_logits = torch.rand(4, 300, generator=generator)
    targets = torch.tensor([255, 10, -1, 299])
    ppc = pixel_prototype_contrast_loss(proto_logits, targets)
    ppd = pixel_prototype_distance_loss(proto_logits, targets)
    assert math.isclose(float(ppc), reference_ppc(proto_logits, targets.tolist(), 1.0), rel_tol=1e-5)
    assert math.isclose(float(ppd), reference_ppd(proto_logits, targets.tolist()), rel_tol=1e-5)
    # With fewer than 256 prototypes, 255 is out of range and therefore ignored.
    small = pixel_prototype_distance_loss(proto_logits[:, :200], targets)
    assert math.isclose(float(small), reference_ppd(proto_logits[:, :200], [-1, 10, -1, -1]), rel_tol=1e-5)


def test_no_valid_pixel_gives_zero_with_a_gradient_path():
    outputs, target = random_outputs()
    outputs["proto_targets"] = torch.full((24,), -1)
    losses = ProtoSegLoss()(outputs, target)
    assert float(losses["proto_contrast"]) == 0.0 and float(losses["proto_distance"]) == 0.0
    losses["loss"].backward()
    assert torch.equal(outputs["proto_logits"].grad, torch.zeros_like(outputs["proto_logits"]))


def test_without_prototype_outputs_the_loss_is_the_cross_entropy():
    outputs, target = random_outputs()
    losses = ProtoSegLoss()({"logits": outputs["logits"]}, target)
    assert set(losses) == {"loss", "ce"}
    assert torch.equal(losses["loss"], ProtoSegLoss()(outputs, target)["ce"])
    losses["loss"].backward()
    assert outputs["logits"].grad is not None


def test_bad_temperature_raises_value_error():
    with pytest.raises(ValueError, match="temperature"):
        ProtoSegLoss(temperature=0.0)


def test_class_weighted_cross_entropy_is_the_weighted_mean_of_nn_cross_entropy():
    from protoseg.losses import SegmentationCELoss
    from protoseg.losses.segmentation import upsampled_cross_entropy

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 6, 6), generator=generator)
    target[0, 0] = 255
    weights = torch.tensor([0.8, 1.0, 1.2, 0.5])
    expected = torch.nn.CrossEntropyLoss(weight=weights.double(), ignore_index=255)(logits, target)
    got = upsampled_cross_entropy(logits, target, 255, weights)
    assert math.isclose(float(got), float(expected), rel_tol=1e-6)
    criterion = SegmentationCELoss(class_weights=weights.tolist())
    assert "class_weights" not in criterion.state_dict()  # not persistent: checkpoints stay as they were
    assert math.isclose(float(criterion({"logits": logits}, target)["loss"]), float(expected), rel_tol=1e-6)
    assert float(upsampled_cross_entropy(logits, torch.full_like(target, 255), 255, weights)) == 0.0
    with pytest.raises(ValueError, match="class weights"):
        SegmentationCELoss(class_weights=[0.0, 0.0])


def test_ce_class_weights_reach_every_segmentation_method_and_their_count_is_checked():
    from protoseg.config import load_config
    from protoseg.methods import DatasetInfo, build_method

    tiny = ["model.backbone.name=tiny", "model.backbone.pretrained=false", "model.decoder.channels=8"]
    for method in ("linear", "protoseg", "contrast", "protoseg_contrast"):
        cfg = load_config(None, tiny + [f"model.method={method}", "model.ce_class_weights=[1, 2, 3]"])
        built = build_method(cfg.model, DatasetInfo(3, True))
        weights = [m.class_weights for m in built.modules() if getattr(m, "class_weights", None) is not None]
        assert weights and all(w.tolist() == [1.0, 2.0, 3.0] for w in weights), method
        with pytest.raises(ValueError, match="model.ce_class_weights.*3 values.*4 classes"):
            build_method(cfg.model, DatasetInfo(4, True))
