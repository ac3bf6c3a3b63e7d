"""The public Python API (docs/api.md): protoseg.load / create_model and the Model's predictions, checked
against `protoseg predict` pixel for pixel and against the network's own outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import protoseg
from doc_examples import python_blocks
from protoseg.cli import main
from protoseg.data.shapes import generate_shapes
from protoseg.ops.inference import InferenceSettings
from tiny_runs import set_args

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 11  # the shapes benchmark: 10 shapes + background


def tiny_overrides(root: Path, **extra) -> list[str]:
    values = {
        "data.root": str(root),
        "data.crop_size": "[48, 48]",
        "data.num_workers": 0,
        "data.mean": "[0.4, 0.5, 0.6]",
        "data.std": "[0.2, 0.25, 0.3]",
        "model.backbone.name": "tiny",
        "model.backbone.pretrained": "false",
        "model.decoder.channels": 16,
        "train.iterations": 4,
        "train.batch_size": 4,
        "train.lr": 0.05,
        "train.log_interval": 2,
        "train.val_interval": 4,
        "train.checkpoint_interval": 4,
        "train.device": "cpu",
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_shapes")
    generate_shapes(root, size=64, num_train=8, num_val=3, seed=11)
    return root


@pytest.fixture(scope="module")
def proto_run(shapes_root, tmp_path_factory):
    """A tiny ProtoSeg run whose own eval settings are sliding window + two scales + flip."""
    run_dir = tmp_path_factory.mktemp("api_proto") / "run"
    overrides = tiny_overrides(
        shapes_root,
        **{
            "model.method": "protoseg",
            "model.protoseg.num_prototypes": 3,
            "model.protoseg.proj_dim": 8,
            "model.protoseg.momentum": 0.5,
            "eval.mode": "slide",
            "eval.crop_size": "[40, 40]",
            "eval.scales": "[0.75, 1.0]",
            "eval.flip": "true",
        },
    )
    sets = set_args(overrides)
    config = str(ROOT / "configs/shapes/protoseg.yaml")
    assert main(["train", config, "--run-dir", str(run_dir), "--no-progress", *sets]) == 0
    return run_dir


@pytest.fixture(scope="module")
def model(proto_run):
    return protoseg.load(proto_run)


@pytest.fixture(scope="module")
def images(shapes_root):
    names = (shapes_root / "ImageSets/Segmentation/val.txt").read_text().split()
    return [shapes_root / "JPEGImages" / f"{name}.jpg" for name in names]


def _cli_pngs(run_dir: Path, images: list[Path], out: Path, *extra: str) -> list[np.ndarray]:
    checkpoint = str(run_dir / "checkpoints/best.pt")
    arguments = ["predict", "--checkpoint", checkpoint, "--out", str(out), "--device", "cpu", *extra]
    assert main([*arguments, *map(str, images)]) == 0
    return [np.asarray(Image.open(out / f"{path.stem}.png")) for path in images]


def test_prediction_equals_protoseg_predict_pixel_for_pixel(model, proto_run, images, tmp_path, capsys):
    """The run's own settings (sliding window, scales 0.75 / 1, flip) and --tta (six scales + flip)."""
    assert model.settings.mode == "slide" and model.settings.flip and len(model.settings.scales) == 2
    for extra, tta in (((), False), (("--tta",), True)):
        expected = _cli_pngs(proto_run, images, tmp_path / f"cli_{tta}", *extra)
        predicted = model.predict(images, tta=tta)
        assert isinstance(predicted, list) and len(predicted) == len(images)
        for labels, png in zip(predicted, expected):
            assert labels.dtype == np.uint8 and labels.shape == png.shape
            assert np.array_equal(labels, png)
        written = model.save_predictions(images, tmp_path / f"api_{tta}", tta=tta)
        for path, png in zip(written, expected):
            assert np.array_equal(np.asarray(Image.open(path)), png)
    capsys.readouterr()


def test_every_input_kind_gives_the_same_labels(model, images, shapes_root):
    path = images[0]
    reference = model.predict(path)
    picture = Image.open(path)
    pixels = np.asarray(picture.convert("RGB"))
    tensor = model.preprocess(path)
    assert tensor.shape == (1, 3, *pixels.shape[:2])
    assert np.array_equal(model.predict(str(path)), reference)
    assert np.array_equal(model.predict(picture), reference)
    assert np.array_equal(model.predict(pixels), reference)
    assert np.array_equal(model.predict(tensor[0]), reference)
    batch = model.predict(np.stack([pixels, pixels]))
    assert batch.shape == (2, *reference.shape) and np.array_equal(batch[1], reference)
    assert np.array_equal(model.predict(torch.cat([tensor, tensor]))[0], reference)
    folder = model.predict(shapes_root / "JPEGImages")
    assert len(folder) == len(list((shapes_root / "JPEGImages").glob("*.jpg")))
    with pytest.raises(ValueError, match="cannot read an image from a dict"):
        model.predict({"image": path})
    with pytest.raises(ValueError, match=r"\(H, W, 3\) or \(B, H, W, 3\)"):
        model.predict(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="a list of inputs holds single images"):
        model.predict([torch.cat([tensor, tensor])])
    assert not model.training
    with pytest.raises(FileNotFoundError, match="not-there.jpg"):
        model.predict(shapes_root / "not-there.jpg")


def test_settings_single_scale_multiscale_and_window(model, images):
    image = model.preprocess(images[0])
    single = model.probabilities(image, settings=InferenceSettings())
    assert single.shape == (1, NUM_CLASSES, 64, 64)
    torch.testing.assert_close(single.sum(1), torch.ones(1, 64, 64))
    torch.testing.assert_close(single, model.logits(image).softmax(1))
    whole = model.predict(image, mode="whole", scales=(1.0,), flip=False)
    assert np.array_equal(whole, model.logits(image).argmax(1).numpy().astype(np.uint8))
    summed = model.probabilities(image, tta=True)  # averaged over 12 views: still a distribution
    torch.testing.assert_close(summed.sum(1), torch.ones(1, 64, 64))
    assert np.array_equal(summed.argmax(1).numpy().astype(np.uint8), model.predict(image, tta=True))
    with pytest.raises(ValueError, match="unknown inference mode 'tiles'"):
        model.predict(image, mode="tiles")


def test_similarity_embeddings_and_prototypes_are_the_heads(model, images):
    image = model.preprocess(images[1])
    head = model.network.head
    maps = model.similarity(image)
    embeddings = model.embeddings(image)
    height, width = embeddings.shape[-2:]
    assert maps.shape == (1, NUM_CLASSES, 3, height, width)
    assert embeddings.shape == (1, 8, height, width)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(1, height, width))
    assert model.prototypes.shape == (NUM_CLASSES, 3, 8)
    # the head's logits are the LayerNorm of max_k of the maps
    expected = model.network.eval()(image)["logits"]
    rebuilt = head.mask_norm(maps.amax(2).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(rebuilt, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        maps[0, :, :, 2, 3], model.prototypes @ embeddings[0, :, 2, 3], atol=1e-6, rtol=1e-6
    )
    assert model.features(image).shape == (1, 16, height, width)
    one = model.similarity(images[1])
    assert one.shape == (NUM_CLASSES, 3, height, width)


def test_model_is_a_module_whose_forward_is_the_logits(model, images):
    image = model.preprocess(images[0])
    torch.testing.assert_close(model(image), model.network.predict(image))
    assert model.num_classes == NUM_CLASSES and len(model.palette) == NUM_CLASSES
    assert model.class_names[0] == "background" and model.method_name == "protoseg"
    assert "method=protoseg" in repr(model)


def test_create_model_builds_every_method_and_trains_in_code(shapes_root):
    assert protoseg.list_methods()[:2] == ["linear", "protoseg"]
    model = protoseg.create_model(
        "protoseg", num_classes=4, overrides=["model.protoseg.num_prototypes=2", "model.decoder.channels=8"]
    )
    assert model.training and model.prototypes.shape == (4, 2, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, 4:20, 4:20], masks[1, 10:30, 8:24], masks[1, :6] = 1, 2, 3
    colours = torch.tensor([[-1.0, -1.0, -1.0], [1.5, -0.5, 0.0], [0.0, 1.0, -1.5], [1.0, 1.0, 1.0]])
    batch = {"image": colours[masks].permute(0, 3, 1, 2) + 0.2 * torch.randn(2, 3, 32, 32), "mask": masks}
    before = model.prototypes.clone()
    losses = []
    for iteration in range(5):
        terms = model.method(batch, iteration)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        model.method.after_step(iteration)
        losses.append(terms["loss"].item())
    assert not torch.equal(before, model.prototypes)
    assert losses[-1] < losses[0]
    assert model.predict(torch.randn(3, 32, 32)).shape == (32, 32)
    assert model.training  # predictions leave the mode as it was

    state = torch.random.get_rng_state()
    first, second = (protoseg.create_model("linear", num_classes=3, seed=4) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded, without touching the global RNG
    torch.testing.assert_close(first.state_dict(), second.state_dict())
    for name in protoseg.list_methods():
        built = protoseg.create_model(name, num_classes=3, has_background=True)
        assert built.method_name == name
    from_file = protoseg.create_model(config=ROOT / "configs/shapes/linear.yaml", class_names=["a", "b"])
    assert from_file.method_name == "linear" and from_file.class_names == ["a", "b"]
    again = protoseg.create_model("contrast", num_classes=2, config=from_file.config)
    assert again.method_name == "contrast" and again.config.model.backbone.name == "tf_efficientnet_lite0"
    assert again.config.model.backbone.pretrained is False  # create_model loads no weights unless asked


def test_create_model_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"unknown model\.method 'protosegg' \(valid: linear, protoseg"):
        protoseg.create_model("protosegg", num_classes=3)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        protoseg.create_model("linear")
    with pytest.raises(ValueError, match="needs a dataset whose class 0 is background"):
        protoseg.create_model("cam", num_classes=3)
    with pytest.raises(ValueError, match="model.protoseg.num_prototypes"):
        protoseg.create_model("protoseg", num_classes=3, overrides=["model.protoseg.num_prototypes=0"])
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        protoseg.load("no-such-run")


def test_cam_networks_give_cams_and_refuse_segmentation():
    model = protoseg.create_model("cam", num_classes=4, has_background=True).eval()
    images = torch.randn(2, 3, 40, 40)
    cams = model.cams(images, scales=(1.0, 0.5), flip=True)
    assert cams.shape == (2, 3, 40, 40) and float(cams.min()) >= 0 and float(cams.max()) < 1
    tagged = model.cams(images[0], tags=[1, 0, 0])
    assert tagged.shape == (3, 40, 40) and float(tagged[1:].abs().max()) == 0
    assert model(images).shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="weakly supervised model.method=cam CAM network: use model.cams"):
        model.predict(images)
    linear = protoseg.create_model("linear", num_classes=3)
    with pytest.raises(ValueError, match="needs prototypes; model.method=linear has a LinearHead"):
        linear.similarity(images)
    with pytest.raises(ValueError, match="model.method=linear is a segmentor"):
        linear.cams(images)


def test_heads_and_losses_work_standalone_on_any_backbone():
    """The README's example: a ProtoSeg head and its loss on another network's features."""
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, stride=4, padding=1), torch.nn.ReLU())
    head = protoseg.ProtoSegHead(in_channels=24, num_classes=5, num_prototypes=3)
    criterion = protoseg.ProtoSegLoss(proto_contrast_weight=0.01, proto_distance_weight=0.001)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    before = head.bank.prototypes.clone()
    for _ in range(2):
        outputs = head(backbone(images), target=labels)
        terms = criterion(outputs, labels)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        head.update_prototypes(outputs["prototype_update"])
    assert outputs["logits"].shape == (2, 5, 8, 8)
    assert not torch.equal(before, head.bank.prototypes)
    assert protoseg.ProtoSegHead is protoseg.models.heads.ProtoSegHead


def test_import_protoseg_does_not_import_torch():
    """`protoseg` (the command) sets process defaults before torch loads: the package import is lazy."""
    code = "import sys, protoseg; print('torch' in sys.modules, protoseg.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", protoseg.__version__]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        protoseg.nothing  # noqa: B018


def test_the_docs_heads_example_runs():
    """docs/api.md, "Heads and losses on any backbone": the README's standalone-head example."""
    (block, *_) = python_blocks("docs/api.md", "## Heads and losses on any backbone")
    namespace: dict = {}
    exec(compile(block, "docs/api.md", "exec"), namespace)
    assert namespace["out"]["logits"].shape == (2, 19, 32, 32)
