"""benchmarks/protoseg_prototype_usage.py: the appearance-mode map of a shapes image, the information
measures against brute-force float64 references, and a run over a tiny trained ProtoSeg model."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from protoseg.cli import main
from protoseg.data.shapes import generate_shapes
from tiny_runs import load_benchmark, set_args, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


usage = load_benchmark("protoseg_prototype_usage")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("usage_shapes")
    generate_shapes(root, size=64, num_train=8, num_val=4, seed=5)
    return root


def _train(shapes_root, run_dir: Path, config: str, **extra) -> Path:
    overrides = tiny_overrides(shapes_root, **{"train.iterations": 4, "train.val_interval": 4, **extra})
    config_path = str(ROOT / "configs/shapes" / config)
    assert main(["train", config_path, "--run-dir", str(run_dir), "--no-progress", *set_args(overrides)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def proto_run(shapes_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("usage_proto") / "run"
    return _train(
        shapes_root,
        run_dir,
        "protoseg.yaml",
        **{"model.protoseg.num_prototypes": 3, "model.protoseg.proj_dim": 8, "model.protoseg.momentum": 0.5},
    )


def test_mode_map_marks_a_class_seen_in_two_modes_unknown():
    class_names = ["background", "disc", "square"]
    modes = ["dotted", "filled", "outlined", "bg:checker", "bg:noise"]
    mask = torch.tensor([[0, 1, 1], [2, 2, 255], [0, 2, 1]])
    record = {
        "background": "noise",
        "objects": [
            {"class": "disc", "mode": "filled"},
            {"class": "square", "mode": "outlined"},
            {"class": "square", "mode": "dotted"},
            {"class": "disc", "mode": "filled"},
        ],
    }
    result = usage.mode_map(mask, record, class_names, modes)
    unknown = usage.UNKNOWN_MODE
    expected = torch.tensor([[4, 1, 1], [unknown, unknown, unknown], [4, unknown, 1]])
    assert torch.equal(result, expected)


def test_mutual_information_matches_the_definition_in_float64():
    generator = torch.Generator().manual_seed(0)
    joint = torch.randint(0, 20, (4, 3), generator=generator).double()
    p = joint / joint.sum()
    pa, pb = p.sum(dim=1), p.sum(dim=0)
    reference = sum(
        float(p[i, j] * math.log(p[i, j] / (pa[i] * pb[j])))
        for i, j in itertools.product(range(4), range(3))
        if p[i, j] > 0
    )
    assert usage.mutual_information(joint) == pytest.approx(reference, abs=1e-12)
    independent = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 5.0])).double()
    assert usage.mutual_information(independent) == pytest.approx(0.0, abs=1e-12)
    # each prototype serves one mode: the prototype tells the mode, I = H(mode)
    deterministic = torch.tensor([[5.0, 0, 0], [0, 7.0, 0], [0, 0, 2.0], [0, 3.0, 0]]).double()
    assert usage.mutual_information(deterministic) == pytest.approx(usage.entropy(deterministic.sum(dim=0)))


def test_pair_cosines_match_a_loop_over_pairs():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(9, 5, generator=generator), dim=1)
    labels = torch.tensor([1, 1, 1, 2, 2, 3, 3, 3, 1])
    modes = torch.tensor([0, 0, 1, 0, 2, 1, 1, 2, 1])
    groups: dict[str, list[float]] = {"cos_same_mode": [], "cos_other_mode": [], "cos_other_class": []}
    for i, j in itertools.permutations(range(9), 2):
        cosine = float(embeddings[i].double() @ embeddings[j].double())
        if labels[i] != labels[j]:
            groups["cos_other_class"].append(cosine)
        elif modes[i] == modes[j]:
            groups["cos_same_mode"].append(cosine)
        else:
            groups["cos_other_mode"].append(cosine)
    result = usage.pair_cosines(embeddings, labels, modes)
    for name, values in groups.items():
        assert result[name] == pytest.approx(sum(values) / len(values), abs=1e-12)


def test_usage_of_a_trained_protoseg_run_stays_in_its_bounds(proto_run, shapes_root):
    row = usage.usage(proto_run, str(shapes_root), proto_run / "checkpoints/last.pt")
    assert row["num_prototypes"] == 3
    assert 1.0 - 1e-9 <= row["effective"] <= 3.0 + 1e-9
    assert 1.0 - 1e-9 <= row["background_effective"] <= 3.0 + 1e-9
    assert 0.0 <= row["mode_information"] <= 1.0 + 1e-9
    assert 0.0 <= row["pixel_accuracy"] <= 1.0
    assert all(0.0 <= value <= 1.0 for value in row["accuracy"].values())
    assert any(mode.startswith("bg:") for mode in row["accuracy"])
    assert row["margin"] == pytest.approx(row["nearest_own"] - row["nearest_other"])
    assert (
        -1.0 - 1e-6 <= row["nearest_other"] <= 1.0 + 1e-6 and -1.0 - 1e-6 <= row["nearest_own"] <= 1.0 + 1e-6
    )
    assert row["pixels"] > 0
    assert 0.0 <= row["miou_mean_prototype"] <= 1.0
    assert 0.0 <= row["foreground_as_background"] <= 1.0 and 0.0 <= row["background_as_foreground"] <= 1.0
    assert set(row["miou_by_background_offset"]) == {str(offset) for offset in usage.BACKGROUND_OFFSETS}
    assert "| run | K |" in usage.table([row])


def test_usage_refuses_a_run_without_prototypes(shapes_root, tmp_path):
    linear = _train(shapes_root, tmp_path / "linear", "linear.yaml")
    with pytest.raises(ValueError, match="no prototypes"):
        usage.usage(linear, str(shapes_root), linear / "checkpoints/last.pt")


def test_missing_checkpoint_is_one_error(proto_run, shapes_root, capsys):
    with pytest.raises(SystemExit):
        usage.main(["--runs", str(proto_run), "--data", str(shapes_root), "--checkpoint", "nope.pt"])
    assert "nope.pt: no such checkpoint" in capsys.readouterr().err


def test_with_one_prototype_the_mean_prototype_is_the_model_itself(shapes_root, tmp_path):
    run = _train(
        shapes_root,
        tmp_path / "k1",
        "protoseg.yaml",
        **{"model.protoseg.num_prototypes": 1, "model.protoseg.proj_dim": 8, "model.protoseg.momentum": 0.5},
    )
    row = usage.usage(run, str(shapes_root), run / "checkpoints/last.pt")
    assert row["effective"] == pytest.approx(1.0) and row["mode_information"] == 0.0
    assert row["miou_mean_prototype"] == row["miou_by_background_offset"]["0.0"]
