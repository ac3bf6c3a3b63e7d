"""protoseg's ProtoSeg head on segmentation_models_pytorch encoders / decoders: it trains (the loss falls,
the prototypes move), predicts at the input size and exports. Skipped without the package:
pip install 'protoseg[smp]'. (mmsegmentation cannot be installed with the supported torch: docs/api.md.)"""

from __future__ import annotations

import pytest
import torch

from doc_examples import python_blocks
from protoseg.losses import ProtoSegLoss
from protoseg.models.heads import LinearHead, ProtoSegHead
from protoseg.ops.inference import predict_probabilities
from tiny_runs import load_benchmark

smp = pytest.importorskip(
    "segmentation_models_pytorch", reason="needs segmentation_models_pytorch: pip install 'protoseg[smp]'"
)
from protoseg.integrations.smp import protoseg_segmentor  # noqa: E402

early_training = load_benchmark("protoseg_early_training")


@pytest.mark.parametrize("architecture", ["Unet", "FPN"])
def test_protoseg_head_on_an_smp_model_trains_and_moves_its_prototypes(architecture):
    """The library default (``projection_norm: batch``) trains from the first steps: after 8 steps
    every foreground prototype moved and the loss fell (docs/methods.md section 1, "The defaults")."""
    batch = early_training.colour_blobs()
    network, _, moved, losses = early_training.train(architecture, None, 0, 8)
    assert isinstance(network.head, ProtoSegHead)
    assert bool((moved[1:] > 1e-3).all()), moved  # every prototype of the foreground classes moved
    assert losses[-1] < 0.8 * losses[0], losses
    network.eval()
    logits = network.predict(batch["image"])
    assert logits.shape == (2, 3, 64, 64)
    probabilities = predict_probabilities(network.predict, batch["image"], 3, scales=(0.5, 1.0), flip=True)
    assert probabilities.shape == (2, 3, 64, 64)


def test_the_head_by_hand_as_in_the_docs():
    """docs/api.md's loop: the head's forward with a target, the loss, then update_prototypes."""
    torch.manual_seed(0)
    network = protoseg_segmentor(smp.Unet("resnet18", encoder_weights=None, classes=3), num_classes=3)
    batch = early_training.colour_blobs(noise_seed=2)
    outputs = network(batch["image"], target=batch["mask"])
    assert outputs["logits"].shape == (2, 3, 64, 64) and outputs["proto_logits"].shape == (2 * 64 * 64, 30)
    ProtoSegLoss()(outputs, batch["mask"])["loss"].backward()
    before = network.head.bank.prototypes.clone()
    network.head.update_prototypes(outputs["prototype_update"])
    assert not torch.equal(before, network.head.bank.prototypes)


def test_other_heads_and_bad_models():
    base = smp.FPN("resnet18", encoder_weights=None, classes=3)
    network = protoseg_segmentor(
        base, num_classes=4, make_head=lambda channels, classes: LinearHead(channels, classes)
    )
    assert network.eval().predict(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    with pytest.raises(ValueError, match="expected a segmentation_models_pytorch model .* got a Conv2d"):
        protoseg_segmentor(torch.nn.Conv2d(3, 3, 1), num_classes=2)
    with pytest.raises(ValueError, match="give make_head or ProtoSegHead options, not both"):
        protoseg_segmentor(base, 2, make_head=LinearHead, num_prototypes=3)


def test_smp_protoseg_network_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'protoseg[onnx]'")
    pytest.importorskip("onnxscript", reason="needs onnxscript: pip install 'protoseg[onnx]'")
    from protoseg.export import compare_onnx, export_model

    torch.manual_seed(0)
    network = protoseg_segmentor(
        smp.Unet("resnet18", encoder_weights=None, classes=3), 3, num_prototypes=2
    ).eval()
    result = export_model(network, tmp_path / "smp.onnx", torch.randn(2, 3, 64, 64))
    check = compare_onnx(result.path, network, torch.randn(1, 3, 96, 64))
    assert check["max_abs_diff"] <= 1e-4 and check["labels_equal"]


def test_the_docs_smp_example_runs():
    (block,) = python_blocks("docs/api.md", "### segmentation_models_pytorch")
    namespace: dict = {}
    exec(compile(block, "docs/api.md", "exec"), namespace)
    assert namespace["logits"].shape == (2, 21, 64, 64)
