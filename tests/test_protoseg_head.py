import pytest
import torch
import torch.nn.functional as F

from protoseg.losses import ProtoSegLoss
from protoseg.models.heads import ProtoSegHead
from protoseg.prototypes import PrototypeBank

NUM_CLASSES, NUM_PROTOTYPES, IN_CHANNELS, DIM = 4, 3, 6, 5


def make_head(**kwargs) -> ProtoSegHead:
    """The paper's head (no normalisation of the projection: the per-pixel references below)."""
    torch.manual_seed(0)
    kwargs.setdefault("projection_norm", "none")
    return ProtoSegHead(IN_CHANNELS, NUM_CLASSES, num_prototypes=NUM_PROTOTYPES, proj_dim=DIM, **kwargs)


def learn(head: ProtoSegHead, features: torch.Tensor, target: torch.Tensor) -> dict:
    """A training forward followed by the prototype update it hands over (as a method's after-step)."""
    outputs = head(features, target)
    head.update_prototypes(outputs["prototype_update"])
    return outputs


def make_batch(seed: int, height: int = 5, width: int = 4, ignore_fraction: float = 0.2):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, IN_CHANNELS, height, width, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (2, height, width), generator=generator)
    target[torch.rand(2, height, width, generator=generator) < ignore_fraction] = 255
    return features, target


def reference_embeddings(head: ProtoSegHead, features: torch.Tensor) -> torch.Tensor:
    """Per-pixel loops, float64: proj, LayerNorm over D, L2 over channels; (B, h, w, D)."""
    first, second = head.proj[0], head.proj[2]
    batch, _, height, width = features.shape
    out = torch.zeros(batch, height, width, DIM, dtype=torch.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                pixel = features[b, :, y, x].double()
                hidden = torch.relu(first.weight[:, :, 0, 0].double() @ pixel + first.bias.double())
                projected = second.weight[:, :, 0, 0].double() @ hidden + second.bias.double()
                centred = projected - projected.mean()
                normed = centred / torch.sqrt(centred.pow(2).mean() + head.feat_norm.eps)
                normed = normed * head.feat_norm.weight.double() + head.feat_norm.bias.double()
                out[b, y, x] = normed / normed.norm()
    return out


def test_logits_match_per_pixel_reference_and_embeddings_are_unit_norm_over_channels():
    head = make_head().eval()
    with torch.no_grad():
        head.feat_norm.weight.uniform_(0.5, 1.5)
        head.mask_norm.weight.uniform_(0.5, 1.5)
        head.mask_norm.bias.uniform_(-0.5, 0.5)
    features, _ = make_batch(1)
    logits = head(features)["logits"]
    assert logits.shape == (2, NUM_CLASSES, 5, 4)
    embeddings = reference_embeddings(head, features)
    prototypes = head.bank.prototypes.double()
    for b in range(2):
        for y in range(5):
            for x in range(4):
                scores = torch.stack(
                    [(prototypes[c] @ embeddings[b, y, x]).max() for c in range(NUM_CLASSES)]
                )
                expected = F.layer_norm(
                    scores, (NUM_CLASSES,), head.mask_norm.weight.double(), head.mask_norm.bias.double()
                )
                torch.testing.assert_close(logits[b, :, y, x].double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(head.embed(features).double(), embeddings.reshape(-1, DIM), atol=1e-6, rtol=0)


def test_no_update_in_eval_mode_or_without_target():
    head = make_head()
    features, target = make_batch(2)
    before = head.bank.prototypes.clone()
    outputs = head(features)  # training mode, no target
    assert set(outputs) == {"logits"}
    head.eval()
    outputs = head(features, target)  # eval mode, with target
    assert set(outputs) == {"logits"}
    assert torch.equal(head.bank.prototypes, before)


def test_training_step_clusters_updates_and_builds_targets_like_the_bank():
    head = make_head(momentum=0.5)
    features, target = make_batch(3, height=4, width=4)
    target_full = F.interpolate(target[:, None].float(), size=(8, 8), mode="nearest")[:, 0].long()
    bank = PrototypeBank(NUM_CLASSES, NUM_PROTOTYPES, DIM, momentum=0.5)
    bank.load_state_dict(head.bank.state_dict())
    with torch.no_grad():
        embeddings = head.embed(features)
        logits = head.eval()(features)["logits"]
    head.train()
    before = head.bank.prototypes.reshape(-1, DIM).clone()
    outputs = head(features, target_full)  # the head resizes 8x8 -> 4x4 (nearest) itself
    assert torch.equal(head.bank.prototypes.reshape(-1, DIM), before), "the forward updates nothing"
    head.update_prototypes(outputs["prototype_update"])
    labels = target.reshape(-1)
    valid = labels != 255
    assignment = bank.cluster(embeddings, labels)
    correct = logits.permute(0, 2, 3, 1).reshape(-1, NUM_CLASSES).argmax(dim=1) == labels
    bank.update(embeddings, labels, assignment.update, correct)
    torch.testing.assert_close(head.bank.prototypes, bank.prototypes)
    assert not torch.equal(head.bank.prototypes.reshape(-1, DIM), before)
    targets = outputs["proto_targets"]
    assert targets.dtype == torch.int64 and targets.shape == (32,)
    for n in range(32):
        expected = int(labels[n]) * NUM_PROTOTYPES + int(assignment.target[n]) if valid[n] else -1
        assert int(targets[n]) == expected
    assert outputs["proto_logits"].shape == (32, NUM_CLASSES * NUM_PROTOTYPES)
    # The similarities (and the gradient) are those of the prototypes before the update.
    torch.testing.assert_close(outputs["proto_logits"].detach(), embeddings @ before.t())


def test_update_pixels_all_moves_prototypes_from_mispredicted_pixels_too():
    """``update_pixels="all"``: the update of the bank with every labelled pixel; ``"correct"`` (the
    release) leaves a class whose pixels are all mispredicted where it was."""
    features, target = make_batch(5, height=4, width=4)
    labels = target.reshape(-1)
    heads = {mode: make_head(momentum=0.5, update_pixels=mode) for mode in ("correct", "all")}
    with torch.no_grad():
        embeddings = heads["all"].embed(features)
        predicted = heads["all"].eval()(features)["logits"].permute(0, 2, 3, 1).reshape(-1, NUM_CLASSES)
    predicted = predicted.argmax(dim=1)
    valid = labels != 255
    present = [c for c in range(NUM_CLASSES) if (labels == c).any()]
    missed = [c for c in present if not (predicted[labels == c] == c).any()]
    assert missed, "the batch must have a class the untrained head never predicts correctly"
    before = heads["all"].bank.prototypes.clone()
    bank = PrototypeBank(NUM_CLASSES, NUM_PROTOTYPES, DIM, momentum=0.5)
    bank.load_state_dict(heads["all"].bank.state_dict())
    bank.update(embeddings, labels, bank.cluster(embeddings, labels).update, valid)
    for mode, head in heads.items():
        outputs = head.train()(features, target)
        expected_mask = valid if mode == "all" else (predicted == labels)
        assert torch.equal(outputs["prototype_update"].correct, expected_mask)
        head.update_prototypes(outputs["prototype_update"])
    torch.testing.assert_close(heads["all"].bank.prototypes, bank.prototypes)
    for c in missed:
        assert torch.equal(heads["correct"].bank.prototypes[c], before[c])
        assert not torch.equal(heads["all"].bank.prototypes[c], before[c])
    with pytest.raises(ValueError, match="update_pixels must be one of"):
        make_head(update_pixels="wrong")


def test_gradients_reach_features_but_not_prototypes():
    head = make_head()
    features, target = make_batch(4)
    features.requires_grad_(True)
    outputs = learn(head, features, target)
    losses = ProtoSegLoss(proto_contrast_weight=1.0, proto_distance_weight=1.0)(outputs, target)
    losses["loss"].backward()  # no error although the bank was updated in place
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert not head.bank.prototypes.requires_grad
    assert all(p.grad is not None for p in head.parameters())


def test_ignored_pixels_change_nothing_for_the_other_pixels():
    features, target = make_batch(5)
    ignored = (target == 255).unsqueeze(1).expand_as(features)
    altered = features.clone()
    altered[ignored] = torch.randn(int(ignored.sum())) * 100
    results = []
    for inputs in (features, altered):
        head = make_head(momentum=0.5)
        outputs = learn(head, inputs, target)
        losses = ProtoSegLoss()(outputs, target)
        results.append((outputs, losses, head.bank.prototypes.clone()))
    (first, first_losses, first_bank), (second, second_losses, second_bank) = results
    keep = (target != 255).reshape(-1)
    flat = lambda logits: logits.permute(0, 2, 3, 1).reshape(-1, NUM_CLASSES)  # noqa: E731
    torch.testing.assert_close(flat(first["logits"])[keep], flat(second["logits"])[keep], rtol=0, atol=1e-6)
    assert torch.equal(first["proto_targets"], second["proto_targets"])
    torch.testing.assert_close(first_bank, second_bank, rtol=0, atol=1e-7)
    for name in ("loss", "ce", "proto_contrast", "proto_distance"):
        torch.testing.assert_close(first_losses[name], second_losses[name], rtol=0, atol=1e-6)


def test_prototypes_are_buffers_saved_and_restored():
    head = make_head()
    names = {name for name, _ in head.named_parameters()}
    assert not any("prototypes" in name for name in names)
    assert "bank.prototypes" in head.state_dict()
    features, target = make_batch(6)
    learn(head, features, target)
    restored = make_head()
    assert not torch.equal(restored.bank.prototypes, head.bank.prototypes)
    restored.load_state_dict(head.state_dict())
    assert torch.equal(restored.bank.prototypes, head.bank.prototypes)


def test_autocast_keeps_the_bank_in_float32_and_unit_norm():
    head = make_head()
    features, target = make_batch(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = learn(head, features, target)
        losses = ProtoSegLoss()(outputs, target)
    assert head.bank.prototypes.dtype == torch.float32
    torch.testing.assert_close(head.bank.prototypes.norm(dim=-1), torch.ones(NUM_CLASSES, NUM_PROTOTYPES))
    assert torch.isfinite(losses["loss"])


def test_labels_outside_the_classes_are_ignored_and_gumbel_mode_is_seeded():
    features, target = make_batch(8)
    target[0, 0, :] = 7  # not a class
    runs = []
    for _ in range(2):
        head = make_head(assignment="gumbel", generator=torch.Generator().manual_seed(3))
        runs.append((learn(head, features, target)["proto_targets"], head.bank.prototypes.clone()))
    assert (runs[0][0].view(2, 5, 4)[0, 0] == -1).all()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("proj_dim, expected", [(None, IN_CHANNELS), (7, 7)])
def test_embedding_dimension(proj_dim, expected):
    head = ProtoSegHead(IN_CHANNELS, NUM_CLASSES, num_prototypes=2, proj_dim=proj_dim)
    assert head.bank.prototypes.shape == (NUM_CLASSES, 2, expected)


def test_without_projection_the_decoder_features_themselves_are_embedded():
    torch.manual_seed(0)
    head = ProtoSegHead(
        IN_CHANNELS, NUM_CLASSES, num_prototypes=NUM_PROTOTYPES, projection="none", projection_norm="none"
    ).eval()
    assert not any(isinstance(module, torch.nn.Conv2d) for module in head.modules())
    # only the two LayerNorms learn: feat_norm over Cin and mask_norm over C
    assert sum(p.numel() for p in head.parameters()) == 2 * IN_CHANNELS + 2 * NUM_CLASSES
    with torch.no_grad():
        head.feat_norm.weight.uniform_(0.5, 1.5)
    features, target = make_batch(2)
    pixels = features.double().permute(0, 2, 3, 1).reshape(-1, IN_CHANNELS)
    normed = F.layer_norm(
        pixels, (IN_CHANNELS,), head.feat_norm.weight.double(), head.feat_norm.bias.double()
    )
    embeddings = normed / normed.norm(dim=1, keepdim=True)
    scores = torch.einsum("nd,ckd->nck", embeddings, head.bank.prototypes.double()).amax(dim=2)
    expected = F.layer_norm(
        scores, (NUM_CLASSES,), head.mask_norm.weight.double(), head.mask_norm.bias.double()
    )
    logits = head(features)["logits"]
    torch.testing.assert_close(
        logits.permute(0, 2, 3, 1).reshape(-1, NUM_CLASSES).double(), expected, atol=1e-5, rtol=0
    )
    head.train()
    features.requires_grad_(True)
    outputs = learn(head, features, target)
    ProtoSegLoss()(outputs, target)["loss"].backward()
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    norms = head.bank.prototypes.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_projection_choices_are_checked():
    with pytest.raises(ValueError, match="projection must be one of"):
        ProtoSegHead(IN_CHANNELS, NUM_CLASSES, projection="linear")
    with pytest.raises(ValueError, match=f"proj_dim must be None or {IN_CHANNELS}, got 3"):
        ProtoSegHead(IN_CHANNELS, NUM_CLASSES, proj_dim=3, projection="none")
    assert (
        ProtoSegHead(IN_CHANNELS, NUM_CLASSES, proj_dim=IN_CHANNELS, projection="none").bank.dim
        == IN_CHANNELS
    )


def reference_projection_norm(mode: str, projected: torch.Tensor) -> torch.Tensor:
    """Float64 loops over (image, channel) of each normalisation of ``ProjectionNorm``."""
    x = projected.double()
    out = torch.empty_like(x)
    batch, channels, height, width = x.shape
    for b in range(batch):
        for c in range(channels):
            plane = x[b, c]
            if mode == "released":  # L2 over the width axis: each row of each channel
                out[b, c] = plane / plane.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
            elif mode == "instance":
                out[b, c] = (plane - plane.mean()) / (plane.var(unbiased=False) + 1e-5).sqrt()
            elif mode == "spatial_rms":
                out[b, c] = plane / (plane.pow(2).mean() + 1e-12).sqrt()
            elif mode == "none":
                out[b, c] = plane
    if mode == "batch":  # training mode: statistics over images and pixels
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        out = (x - mean) / (var + 1e-5).sqrt()
    if mode == "batch_rms":  # training mode: mean square over images and pixels, no centring
        out = x / (x.pow(2).mean(dim=(0, 2, 3), keepdim=True) + 1e-5).sqrt()
    return out


@pytest.mark.parametrize("mode", ["none", "released", "batch", "instance", "spatial_rms", "batch_rms"])
def test_projection_norms_match_float64_references(mode):
    from protoseg.models.heads.protoseg import ProjectionNorm

    projected = torch.randn(2, 5, 6, 7) * 3 + 1
    norm = ProjectionNorm(mode, 5).train()
    torch.testing.assert_close(
        norm(projected).double(), reference_projection_norm(mode, projected), atol=1e-5, rtol=1e-5
    )


def test_running_statistics_norms_embed_each_pixel_alone_at_inference_and_the_per_image_ones_do_not():
    """At inference the running-statistics heads (``batch``, ``batch_rms``) embed each pixel alone; the
    release's width-axis L2 makes a pixel's embedding depend on the other pixels of its row, and
    ``spatial_rms`` / ``instance`` on the other pixels of its image (or sliding window)."""
    features = torch.randn(1, IN_CHANNELS, 8, 12)
    for mode, independent in (
        ("batch", True),
        ("batch_rms", True),
        ("released", False),
        ("spatial_rms", False),
        ("instance", False),
    ):
        head = make_head(projection_norm=mode)
        head.train()
        head(torch.randn(4, IN_CHANNELS, 8, 12))  # some running statistics
        head.eval()
        whole = head.embed(features).view(8, 12, -1)
        left = head.embed(features[..., :6]).view(8, 6, -1)
        assert torch.allclose(whole[:, :6], left, atol=1e-6) == independent, mode


def test_batch_rms_keeps_a_running_mean_square_and_uses_it_at_inference():
    from protoseg.models.heads.protoseg import ProjectionNorm

    norm = ProjectionNorm("batch_rms", 3).train()
    first, second = torch.randn(4, 3, 5, 5) * 2, torch.randn(2, 3, 7, 3) + 1
    norm(first)
    norm(second)
    expected = torch.ones(3, dtype=torch.float64)
    for batch in (first, second):  # running = 0.9 * running + 0.1 * batch mean square
        expected = 0.9 * expected + 0.1 * batch.double().pow(2).mean(dim=(0, 2, 3))
    torch.testing.assert_close(norm.running_mean_square.double(), expected, atol=1e-6, rtol=1e-6)
    norm.eval()
    probe = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(
        norm(probe).double(), probe.double() / (expected + 1e-5).sqrt().view(1, 3, 1, 1), atol=1e-6, rtol=1e-6
    )
    before = norm.running_mean_square.clone()
    norm(probe)
    assert torch.equal(norm.running_mean_square, before)  # inference does not update it


def test_protoseg_default_normalises_the_projection_with_batch_norm():
    """The library default (docs/methods.md section 1); the method's config default is the head's."""
    from protoseg.methods.protoseg import ProtoSegConfig

    head = ProtoSegHead(IN_CHANNELS, NUM_CLASSES)
    assert head.projection_norm.mode == "batch" == ProtoSegConfig().projection_norm
    assert isinstance(head.projection_norm.batch_norm, torch.nn.BatchNorm2d)
