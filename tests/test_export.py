"""`protoseg export` and protoseg.export: the exported files compute what the PyTorch networks compute.

ONNX files run in onnxruntime (CPU) on other batches and image sizes than the export example; the
logits must agree within 1e-4 and give the same labels, for the linear, ProtoSeg, ContrastiveSeg, CAM
and RCA networks. Skipped (one line) without onnx / onnxruntime / onnxscript: pip install 'protoseg[onnx]'.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import pytest
import torch

import protoseg
from protoseg.cli import main
from protoseg.data.shapes import generate_shapes
from protoseg.export import ExportError, compare_onnx, export_model, inference_graph
from protoseg.export.check import compare_exported
from tiny_runs import set_args

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'protoseg[onnx]'")
pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'protoseg[onnx]'")
pytest.importorskip(
    "onnxscript", reason="needs onnxscript (the dynamo exporter): pip install 'protoseg[onnx]'"
)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
CHECK_SHAPES = [(1, 3, 64, 64), (3, 3, 80, 48)]  # the example is (2, 3, 64, 64)


def _model(method: str) -> protoseg.Model:
    torch.manual_seed(0)
    model = protoseg.create_model(
        method, num_classes=5, has_background=True, overrides=["model.decoder.channels=16"]
    ).eval()
    if method == "rca":  # aggregation prototypes, as the k-means refresh sets them
        aggregation = model.network.aggregation
        centroids = torch.nn.functional.normalize(
            torch.randn(4, aggregation.num_prototypes, aggregation.dim), dim=-1
        )
        aggregation.set_prototypes(centroids, torch.tensor([True, True, False, True]))
    return model


@pytest.mark.parametrize("method", ["linear", "protoseg", "contrast", "cam", "rca"])
def test_onnx_runs_in_onnxruntime_like_pytorch(method, tmp_path):
    model = _model(method)
    example = torch.randn(2, 3, 64, 64)
    result = export_model(model.network, tmp_path / "model.onnx", example, metadata={"method": method})
    output = "cams" if method in ("cam", "rca") else "logits"
    assert result.output_name == output and result.opset == 18 and not result.notes
    assert result.input_shape == ["batch", 3, "height", "width"]
    file = onnx.load(str(result.path))
    onnx.checker.check_model(file)
    assert json.loads({prop.key: prop.value for prop in file.metadata_props}["method"]) == method
    for shape in CHECK_SHAPES:
        images = torch.randn(*shape)
        check = compare_onnx(result.path, model.network, images)
        assert check["max_abs_diff"] <= TOLERANCE, (shape, check)
        assert check["labels_equal"], (shape, check)
        with torch.no_grad():
            reference = model.network.predict(images) if output == "logits" else model.network.cams(images)
        assert check["shape"] == list(reference.shape)
    if method == "protoseg":
        # the head at inference: one matmul (N, D) x (D, C*K) and one max over K
        ops = collections.Counter(node.op_type for node in file.graph.node)
        assert ops["MatMul"] == 1 and ops["ReduceMax"] == 1, ops


@pytest.mark.parametrize("format", ["torch_export", "torchscript"])
def test_torch_formats_load_back_and_agree(format, tmp_path):
    model = _model("protoseg")
    result = export_model(model.network, tmp_path / f"model.{format}", torch.randn(2, 3, 64, 64), format)
    assert result.format == format and result.path.is_file()
    for shape in CHECK_SHAPES:
        check = compare_exported(result.path, format, model.network, torch.randn(*shape))
        assert check["max_abs_diff"] <= TOLERANCE and check["labels_equal"], (shape, check)


def test_static_export_fixes_the_sizes_and_says_so_when_run_at_others(tmp_path):
    model = _model("linear")
    result = export_model(model.network, tmp_path / "static.onnx", torch.randn(2, 3, 64, 64), dynamic=False)
    assert result.input_shape == [2, 3, 64, 64]
    assert compare_onnx(result.path, model.network, torch.randn(2, 3, 64, 64))["labels_equal"]
    with pytest.raises(ExportError, match=r"onnxruntime cannot run .* on input \(3, 3, 80, 48\)"):
        compare_onnx(result.path, model.network, torch.randn(3, 3, 80, 48))


def test_what_cannot_be_exported_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="cannot export a Conv2d: protoseg exports a Segmentor"):
        inference_graph(torch.nn.Conv2d(3, 3, 1))
    network = _model("linear").network
    example = torch.randn(2, 3, 32, 32)
    with pytest.raises(
        ExportError, match=r"unknown export format 'tflite' \(valid: onnx, torchscript, torch_export\)"
    ):
        export_model(network, tmp_path / "m", example, "tflite")
    with pytest.raises(ExportError, match=r"unknown ONNX exporter 'tvm' \(valid: dynamo, torchscript\)"):
        export_model(network, tmp_path / "m.onnx", example, exporter="tvm")
    with pytest.raises(ExportError, match="needs opset >= 18, got 13"):
        export_model(network, tmp_path / "m.onnx", example, opset=13)
    with pytest.raises(ExportError, match=r"must be \(B, 3, H, W\), got shape \(3, 32, 32\)"):
        export_model(network, tmp_path / "m.onnx", example[0])


class _DataDependent(torch.nn.Module):
    """A CAM 'network' that branches on its input's values: a graph cannot hold that Python branch."""

    num_classes = 2

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        if images.mean() > 0:
            return images[:, :2]
        return -images[:, :2]


def test_an_exporter_failure_names_the_network_and_the_cause(tmp_path):
    with pytest.raises(
        ExportError, match=r"ONNX export \(dynamo exporter, opset 18\) of _DataDependent failed"
    ):
        export_model(_DataDependent(), tmp_path / "m.onnx", torch.randn(2, 3, 16, 16))


def test_legacy_torchscript_exporter_still_available(tmp_path):
    model = _model("protoseg")
    result = export_model(
        model.network, tmp_path / "legacy.onnx", torch.randn(2, 3, 64, 64), exporter="torchscript"
    )
    assert result.exporter == "torchscript" and result.opset == 18
    check = compare_onnx(result.path, model.network, torch.randn(3, 3, 80, 48))
    assert check["max_abs_diff"] <= TOLERANCE and check["labels_equal"]


def test_cli_export_writes_checks_and_embeds_the_run_metadata(tmp_path, capsys):
    root = tmp_path / "shapes"
    generate_shapes(root, size=48, num_train=4, num_val=2, seed=2)
    run_dir = tmp_path / "run"
    sets = [
        f"data.root={root}",
        "data.crop_size=[32, 32]",
        "data.num_workers=0",
        "model.backbone.name=tiny",
        "model.backbone.pretrained=false",
        "model.decoder.channels=8",
        "model.protoseg.num_prototypes=2",
        "train.iterations=1",
        "train.batch_size=2",
        "train.val_interval=1",
        "train.device=cpu",
    ]
    config = str(ROOT / "configs/shapes/protoseg.yaml")
    arguments = ["train", config, "--run-dir", str(run_dir), "--no-progress"]
    assert main([*arguments, *set_args(sets)]) == 0
    capsys.readouterr()
    assert main(["export", str(run_dir), "--check"]) == 0
    summary = json.loads(capsys.readouterr().out)
    path = run_dir / "export" / "model.onnx"
    assert summary["path"] == str(path) and summary["checkpoint"].endswith("best.pt")
    assert [check["input"] for check in summary["checks"]] == [[2, 3, 32, 32], [3, 3, 64, 16]]
    assert all(check["max_abs_diff"] <= TOLERANCE and check["labels_equal"] for check in summary["checks"])
    props = {prop.key: json.loads(prop.value) for prop in onnx.load(str(path)).metadata_props}
    assert props["method"] == "protoseg" and props["num_classes"] == 11
    assert props["class_names"][0] == "background" and props["std"] == protoseg.load(run_dir).config.data.std
    assert props["protoseg_version"] == protoseg.__version__

    out = tmp_path / "model.pt2"
    assert (
        main(["export", str(run_dir / "checkpoints/last.pt"), "--format", "torch_export", "--out", str(out)])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["format"] == "torch_export" and out.is_file()
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no run folder or checkpoint file" in capsys.readouterr().err


def test_model_export_from_the_api(tmp_path):
    model = _model("contrast")
    result = model.export(tmp_path / "api.onnx", size=(48, 40))
    assert result.path.is_file() and not model.training
    check = compare_onnx(result.path, model.network, torch.randn(1, 3, 40, 56))
    assert check["max_abs_diff"] <= TOLERANCE and check["labels_equal"]
    props = {prop.key: json.loads(prop.value) for prop in onnx.load(str(result.path)).metadata_props}
    assert props["class_names"] == model.class_names and props["method"] == "contrast"


class _SamePadding(torch.nn.Module):
    """A CAM 'network' that pads with ``math.ceil`` of its input size, as timm's "same" padding
    (tf_efficientnet_lite0, the README's backbone) does."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=4)

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_h = max((math.ceil(height / 4) - 1) * 4 + 3 - height, 0)
        pad_w = max((math.ceil(width / 4) - 1) * 4 + 3 - width, 0)
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        return self.conv(torch.nn.functional.pad(images, padding))


def test_size_dependent_padding_onnx_stays_dynamic_torch_export_falls_back_and_says_why(tmp_path):
    network = _SamePadding().eval()
    example = torch.randn(2, 3, 30, 30)
    onnx_result = export_model(network, tmp_path / "same.onnx", example)
    assert onnx_result.input_shape == ["batch", 3, "height", "width"] and not onnx_result.notes
    check = compare_onnx(onnx_result.path, network, torch.randn(3, 3, 45, 37))
    assert check["max_abs_diff"] <= TOLERANCE and check["shape"] == [3, 2, 12, 10]
    program = export_model(network, tmp_path / "same.pt2", example, "torch_export")
    assert program.input_shape == [2, 3, 30, 30]
    (note,) = program.notes
    assert note.startswith("exported for the example's sizes: dynamic sizes failed (SerializeError")
    assert compare_exported(program.path, "torch_export", network, example)["max_abs_diff"] == 0
