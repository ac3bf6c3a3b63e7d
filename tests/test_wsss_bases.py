"""WSSS bases (SEAM, EPS) and PPC plugged into them: the losses against float64 loop references, the PCM,
the recipe (frozen layers, parameter groups, the momentum quirk), CAM normalisation, and the saliency
data path (reading, errors naming the file, transforms, synthetic maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from protoseg.config import load_config
from protoseg.data.saliency import read_saliency, synthetic_saliency, write_synthetic_saliency
from protoseg.data.transforms import build_transforms
from protoseg.engine.optim import build_optimizer
from protoseg.losses.eps import saliency_loss
from protoseg.losses.seam import adaptive_min_pooling_loss, max_norm, max_onehot, seam_losses
from protoseg.methods import DatasetInfo, build_method
from protoseg.models.seam import PixelCorrelationModule, pcm_seed
from protoseg.ops.cams import normalise_cams

TINY = ["model.backbone.name=tiny", "model.backbone.pretrained=false", "model.backbone.output_stride=8"]
DATASET = DatasetInfo(num_classes=5, has_background=True)


def build(*overrides: str):
    cfg = load_config(None, TINY + ["data.saliency_dir=unused", *overrides])
    torch.manual_seed(0)
    return build_method(cfg.model, DATASET, 0)


def batch(size: int = 64):
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(2, 3, size, size, generator=generator),
        "tags": torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]),
        "saliency": torch.rand(2, 1, size, size, generator=generator),
    }


# -- losses against float64 loop references ---------------------------------------------------------
def reference_max_norm(cam):
    out = torch.zeros_like(cam)
    for b in range(cam.shape[0]):
        for c in range(cam.shape[1]):
            r = cam[b, c].clamp_min(0)
            out[b, c] = (r - r.min() - 1e-5).clamp_min(0) / (r.max() - r.min() + 1e-5)
    return out


def test_seam_losses_match_a_float64_loop_reference():
    generator = torch.Generator().manual_seed(0)
    cam_s, ref_s = (torch.randn(2, 4, 12, 12, generator=generator, dtype=torch.float64) for _ in range(2))
    cam_t, ref_t = (torch.randn(2, 4, 6, 6, generator=generator, dtype=torch.float64) for _ in range(2))
    tags = torch.tensor([[1.0, 0, 1], [0, 1, 0]], dtype=torch.float64)
    terms = seam_losses(cam_s, ref_s, cam_t, ref_t, tags, 0.2, align_corners=True)
    label = torch.cat([torch.ones(2, 1, dtype=torch.float64), tags], 1)[:, :, None, None]
    torch.testing.assert_close(max_norm(cam_s), reference_max_norm(cam_s))

    def amp(x):  # per image: hw/4 smallest of max over classes, relu, summed
        total = 0.0
        for b in range(x.shape[0]):
            values = sorted(x[b].max(0).values.flatten().tolist())[: x.shape[2] * x.shape[3] // 4]
            total += sum(max(v, 0.0) for v in values)
        return total / (x.shape[0] * (x.shape[2] * x.shape[3] // 4))

    rvmin = 0.5 * (amp((ref_s * label)[:, 1:]) + amp((ref_t * label)[:, 1:]))
    torch.testing.assert_close(terms["rvmin"].item(), rvmin)
    up = lambda x: F.interpolate(reference_max_norm(x), size=(6, 6), mode="bilinear", align_corners=True)  # noqa: E731
    a, b = up(cam_s) * label, reference_max_norm(cam_t) * label
    torch.testing.assert_close(terms["er"], (a[:, 1:] - b[:, 1:]).abs().mean())
    for x in (a, b):
        x[:, 0] = 1 - x[:, 1:].max(1).values

    def onehot(x):
        x = x.clone()
        top = x[:, 1:].max(1, keepdim=True).values
        x[:, 1:][x[:, 1:] != top] = 0
        return x

    def top_mean(x):
        k = int(4 * 6 * 6 * 0.2)
        return torch.stack([x[i].flatten().sort(descending=True).values[:k].mean() for i in range(2)]).mean()

    ecr = top_mean((onehot(b) - up(ref_s) * label).abs()) + top_mean(
        (onehot(a) - reference_max_norm(ref_t) * label).abs()
    )
    torch.testing.assert_close(terms["ecr"], ecr)
    scores = lambda x: x.mean((2, 3))[:, 1:]  # noqa: E731
    cls = 0.5 * (
        F.multilabel_soft_margin_loss(scores(cam_s), tags)
        + F.multilabel_soft_margin_loss(scores(cam_t), tags)
    )
    torch.testing.assert_close(terms["cls"], cls)


def test_adaptive_min_pooling_and_max_onehot():
    x = torch.tensor([[[[-1.0, 0.5], [2.0, 3.0]], [[0.2, 0.1], [0.0, 4.0]]]])  # (1, 2, 2, 2)
    assert adaptive_min_pooling_loss(x).item() == pytest.approx(
        0.2
    )  # max over classes: 0.2 .5 2 4 -> lowest 1
    cam = torch.tensor([[[[0.3]], [[0.5]], [[0.7]]]])
    torch.testing.assert_close(max_onehot(cam), torch.tensor([[[[0.3]], [[0.0]], [[0.7]]]]))


def test_eps_saliency_loss_matches_a_float64_loop_reference():
    generator = torch.Generator().manual_seed(0)
    cam = torch.randn(2, 4, 5, 5, generator=generator, dtype=torch.float64) * 3
    saliency = torch.rand(2, 1, 10, 10, generator=generator, dtype=torch.float64)
    tags = torch.tensor([[1.0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    result = saliency_loss(cam, saliency, tags, tau=0.3, lam=0.4)
    target = saliency[:, :, ::2, ::2]  # nearest downsampling by 2
    expected = 0.0
    for b in range(2):
        p = cam[b].softmax(0)
        fg = torch.zeros(5, 5, dtype=torch.float64)
        bg = p[0].clone()
        for c in range(3):
            if tags[b, c] < 0.5:
                continue
            r = p[c + 1].round()
            overlap = (r * target[b, 0].round()).sum() / (r + 1e-4).sum()
            if overlap > 0.3:
                fg += p[c + 1]
            else:
                bg += p[c + 1]
        expected += ((0.4 * fg + 0.6 * (1 - bg) - target[b, 0]) ** 2).sum()
    torch.testing.assert_close(result["loss"], expected / (2 * 25))


def test_pcm_seed_and_affinity_propagation():
    cam = torch.tensor([[[[1.0, -1.0]], [[2.0, 0.0]], [[1.0, 3.0]]]])  # (1, 3, 1, 2)
    seed = pcm_seed(cam)
    n = torch.stack([torch.tensor([2.0, 0.0]) / (2 + 1e-5), torch.tensor([1.0, 3.0]) / (3 + 1e-5)])
    n = (n * torch.tensor([2.0, 3.0])[:, None] - 1e-5).clamp_min(0) / torch.tensor([2.0, 3.0])[:, None]
    n = torch.stack([(torch.tensor([2.0, 0.0]) - 1e-5).clamp_min(0) / (2 + 1e-5),
                     (torch.tensor([1.0, 3.0]) - 1e-5).clamp_min(0) / (3 + 1e-5)])  # fmt: skip
    top = n.max(0).values
    torch.testing.assert_close(seed[0, 0, 0], 1 - top)
    torch.testing.assert_close(seed[0, 1:, 0], torch.where(n < top, torch.zeros_like(n), n))
    torch.manual_seed(0)
    pcm = PixelCorrelationModule(4, 6).double()
    images = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    low, high = torch.randn(1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 6, 2, 2, dtype=torch.float64)
    seed = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    refined = pcm(seed, images, low, high)
    affinity = pcm.affinity(images, low, high, (4, 4))[0]
    torch.testing.assert_close(affinity.sum(0), torch.ones(16, dtype=torch.float64), atol=1e-4, rtol=0)
    for j in range(16):  # y_j = sum_i x_i A_ij
        torch.testing.assert_close(refined[0].flatten(1)[:, j], (seed[0].flatten(1) * affinity[:, j]).sum(1))


def test_minmax_normalisation():
    cams = torch.tensor([[[[1.0, 2.0, 5.0]]]])
    expected = (cams - 1 - 1e-5).clamp_min(0) / (4 + 1e-5)
    torch.testing.assert_close(normalise_cams(cams, torch.ones(1, 1), "minmax"), expected)
    torch.testing.assert_close(normalise_cams(cams, torch.ones(1, 1), "max"), cams / (5 + 1e-5))


# -- methods --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, terms",
    [
        (["model.method=seam"], {"cls", "rvmin", "er", "ecr"}),
        (["model.method=eps"], {"cls", "sal"}),
        (
            ["model.method=ppc", "model.ppc.base=seam", "model.ppc.top_k_divisor=8"],
            {"cls", "er", "ecr", "cp"},
        ),
        (["model.method=ppc", "model.ppc.base=eps"], {"cls", "sal", "cp", "cc", "intra"}),
    ],
)
def test_bases_and_ppc_on_them_train(overrides, terms):
    method = build(*overrides)
    optimizer = build_optimizer(method, "sgd", 0.01, 0.9, 1e-4)
    method.train()
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    outputs = method(batch(), 0)
    assert terms <= set(outputs) and torch.isfinite(outputs["loss"])
    optimizer.zero_grad()
    outputs["loss"].backward()
    optimizer.step()
    for name, parameter in method.named_parameters():
        moved = not torch.equal(parameter, before[name])
        assert moved == parameter.requires_grad, name  # frozen stem and BatchNorm never move
    assert set(method.state_dict()) == {f"network.{key}" for key in method.network.state_dict()}
    assert method.cams(batch()["image"]).shape == (2, 4, 8, 8)


def test_ppc_on_seam_contrasts_the_refined_cam_and_adds_the_base_losses():
    method = build("model.method=ppc", "model.ppc.base=seam", "model.ppc.top_k=4")
    method.contrast.generator = torch.Generator().manual_seed(0)
    method.eval()  # no dropout: two forwards agree
    data = batch()
    outputs = method(data, 0)
    source = method.base.view(data["image"])
    target_images = method.target_view(data["image"])
    target = method.base.view(target_images)
    base = method.base.pair_losses(data, source, target, target_images)
    size = target.cam.shape[-2:]
    method.contrast.generator = torch.Generator().manual_seed(0)
    contrast = method.contrast(
        F.interpolate(source.outputs["refined"], size=size, mode="bilinear", align_corners=False),
        F.interpolate(source.features, size=size, mode="bilinear", align_corners=False),
        target.outputs["refined"],
        target.features,
        data["tags"],
    )
    torch.testing.assert_close(outputs["loss"], base["loss"] + contrast["loss"])
    assert method.cam_normalisation == "minmax" and method.inputs == ("image", "tags")


def test_frozen_batchnorm_stays_in_eval_mode_and_groups_follow_the_release():
    method = build("model.method=ppc", "model.ppc.base=seam", "model.seam.momentum_is_weight_decay=true")
    method.train()
    norms = [m for m in method.network.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    groups = build_optimizer(method, "sgd", 0.01, 0.9, 5e-4).param_groups
    backbone = {id(p) for p in method.network.backbone.parameters()}
    by_lr = {round(g["lr"] / 0.01): g for g in groups}
    assert all(id(p) in backbone for p in by_lr[1]["params"])
    assert not any(id(p) in backbone for p in by_lr[10]["params"])
    assert by_lr[1]["weight_decay"] == 5e-4 and all(g["momentum"] == 5e-4 for g in groups)
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable


def test_eps_and_ppc_on_eps_read_saliency_from_the_batch():
    from protoseg.methods import EPSMethod, PPCMethod

    cfg = load_config(None, TINY + ["model.method=ppc", "model.ppc.base=eps"])
    assert PPCMethod.batch_inputs(cfg.model) == EPSMethod.inputs == ("image", "tags", "saliency")
    assert build("model.method=ppc", "model.ppc.base=eps").inputs == ("image", "tags", "saliency")


# -- saliency data --------------------------------------------------------------------------------
def test_read_saliency_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="a.png"):
        read_saliency(tmp_path / "a.png", (4, 4))
    Image.fromarray(np.full((3, 5), 255, np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b.png is 3x5.*image x.jpg is 4x4"):
        read_saliency(tmp_path / "b.png", (4, 4), "x.jpg")
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="c.png"):
        read_saliency(tmp_path / "c.png", (4, 4))
    assert read_saliency(tmp_path / "b.png", (3, 5)).max() == 1.0


def test_transforms_carry_the_saliency_map_with_the_image():
    transforms = build_transforms(
        True, (40, 40), scale_range=(0.5, 1.5), flip=True, mean=(0, 0, 0), std=(1, 1, 1)
    )
    image = torch.rand(3, 32, 32)
    image[0] = torch.linspace(0, 1, 32)[None, :]  # a ramp the saliency copies
    extra = image[:1].clone()
    for seed in range(5):
        plain, _ = transforms(image, None, torch.Generator().manual_seed(seed))
        out, _, saliency = transforms(image, None, torch.Generator().manual_seed(seed), extra=extra)
        torch.testing.assert_close(out, plain)  # the same draws with or without it
        padded = (out == 0).all(0)  # padded pixels (the image's channels are > 0 elsewhere)
        torch.testing.assert_close(saliency[0][~padded], out[0][~padded])
        assert (saliency[0][padded] == 0).all()


def test_synthetic_saliency_errors_grow_as_quality_falls(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 3
    perfect = synthetic_saliency(mask, 0, 1.0)
    assert (perfect[20:44, 20:44] > 0.99).all() and (perfect[:8] < 0.01).all()
    errors = [np.abs(synthetic_saliency(mask, 0, q) - (mask > 0)).mean() for q in (1.0, 0.7, 0.3)]
    assert errors[0] < errors[1] < errors[2]
    np.testing.assert_array_equal(synthetic_saliency(mask, 5, 0.5), synthetic_saliency(mask, 5, 0.5))
    (tmp_path / "SegmentationClass").mkdir()
    Image.fromarray(mask).save(tmp_path / "SegmentationClass" / "x.png")
    summary = write_synthetic_saliency(tmp_path, quality=1.0)
    assert summary["images"] == 1 and summary["foreground_iou"] > 95
    assert read_saliency(tmp_path / "SaliencyMaps" / "x.png", (64, 64)).shape == (64, 64)
