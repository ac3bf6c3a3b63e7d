"""protoseg visualize: the pictures show the model's own numbers, have the expected sizes, and need
no display. References are recomputed in float64 with explicit loops over pixels and prototypes."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.cli import main
from protoseg.config import load_config
from protoseg.data.shapes import SHAPES_CLASS_NAMES, SHAPES_PALETTE, generate_shapes
from protoseg.engine.trainer import Trainer
from protoseg.viz.cams import cam_figure_inches, draw_cams
from protoseg.viz.canvas import figure_pixels
from protoseg.viz.curves import curves_figure_inches, draw_per_class_iou, per_class_figure_inches
from protoseg.viz.embeddings import draw_embeddings, sample_pixel_embeddings
from protoseg.viz.exemplars import (
    BOTTOM,
    CENTRE_X,
    CENTRE_Y,
    IMAGE,
    LEFT,
    RIGHT,
    TOP,
    crop_exemplars,
    draw_exemplars,
    exemplar_figure_inches,
    find_exemplars,
)
from protoseg.viz.predictions import draw_prediction, predict_labels, prediction_figure_inches
from protoseg.viz.projection import pca_2d
from protoseg.viz.run_data import load_sample, open_run, prototype_head
from protoseg.viz.similarity import draw_similarity, similarity_figure_inches, similarity_maps
from protoseg.viz.topk import StreamingTopK
from protoseg.wsss.cam_inference import cam_path, load_cam, save_cam
from protoseg.wsss.pseudo_label import write_pseudo_labels

ROOT = Path(__file__).resolve().parents[1]
NUM_PROTOTYPES = 3
NUM_CLASSES = len(SHAPES_CLASS_NAMES)


def _overrides(root, **extra):
    values = {
        "data.root": str(root),
        "data.crop_size": "[48, 48]",
        "data.num_workers": 0,
        "model.backbone.name": "tiny",
        "model.backbone.pretrained": "false",
        "model.decoder.channels": 16,
        "train.iterations": 3,
        "train.batch_size": 4,
        "train.lr": 0.05,
        "train.log_interval": 1,
        "train.val_interval": 3,
        "train.checkpoint_interval": 3,
        "train.device": "cpu",
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def _train(config: str, run_dir: Path, overrides: list[str]) -> Path:
    trainer = Trainer(load_config(ROOT / config, overrides), run_dir, progress=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    return run_dir


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz_shapes")
    generate_shapes(root, size=64, num_train=8, num_val=4, seed=5)
    return root


@pytest.fixture(scope="module")
def proto_run(shapes_root, tmp_path_factory):
    overrides = _overrides(
        shapes_root,
        **{
            "model.method": "protoseg",
            "model.protoseg.num_prototypes": NUM_PROTOTYPES,
            "model.protoseg.proj_dim": 16,
            "model.protoseg.momentum": 0.5,  # prototypes that moved away from their initialisation
        },
    )
    return _train("configs/shapes/protoseg.yaml", tmp_path_factory.mktemp("viz_proto") / "run", overrides)


@pytest.fixture(scope="module")
def linear_run(shapes_root, tmp_path_factory):
    overrides = _overrides(shapes_root, **{"train.iterations": 1, "train.val_interval": 1})
    return _train("configs/shapes/linear.yaml", tmp_path_factory.mktemp("viz_linear") / "run", overrides)


@pytest.fixture(scope="module")
def trained(proto_run):
    return open_run(proto_run, split="val", device="cpu")


@pytest.fixture(scope="module")
def reference(trained):
    """Float64 copy of the model: ``embed(image)`` -> ``(h, w, D)`` embeddings by explicit per-pixel math
    (LayerNorm and L2) after the model's own projection and its normalisation (eval mode)."""
    model = copy.deepcopy(trained.model).double()
    head = prototype_head(model, "reference", "test")
    cache = {}

    def embed(index: int) -> torch.Tensor:
        if index not in cache:
            image = trained.dataset[index]["image"].unsqueeze(0).double()
            with torch.no_grad():
                projected = head.projection_norm(head.proj(model.decoder(model.backbone(image))))[0]
            dim, height, width = projected.shape
            norm = head.feat_norm
            out = torch.empty(height, width, dim, dtype=torch.float64)
            for y in range(height):
                for x in range(width):
                    vector = projected[:, y, x]
                    centred = vector - vector.mean()
                    normed = centred / torch.sqrt((centred * centred).mean() + norm.eps)
                    normed = normed * norm.weight.detach() + norm.bias.detach()
                    out[y, x] = normed / torch.sqrt((normed * normed).sum())
            cache[index] = out
        return cache[index]

    prototypes = head.bank.prototypes.detach().double()  # (C, K, D)
    return embed, prototypes


def _nearest_labels(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize by PyTorch's rule: source index floor(dst * in / out)."""
    out = np.empty((height, width), dtype=np.int64)
    for y in range(height):
        for x in range(width):
            out[y, x] = mask[(y * mask.shape[0]) // height, (x * mask.shape[1]) // width]
    return out


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert np.asarray(image.convert("L")).std() > 5, f"{path} looks blank"
        return image.size


def _run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    code = main(["visualize", *map(str, argv)])
    captured = capsys.readouterr()
    return code, [line for line in captured.out.splitlines() if line.endswith(".png")], captured.err


# -- StreamingTopK ------------------------------------------------------------------------------------
def test_streaming_topk_equals_sorting_everything():
    generator = torch.Generator().manual_seed(1)
    rows, k = 4, 5
    topk = StreamingTopK(rows, k)
    seen: list[list[tuple[float, int]]] = [[] for _ in range(rows)]
    counter = 0
    for chunk in (3, 1, 7, 2, 6):
        scores = torch.rand(rows, chunk, generator=generator)
        scores[0, :] = -torch.inf  # row 0 never gets a candidate
        shared = torch.arange(counter, counter + chunk).unsqueeze(1)  # (M, 1) payload shared by rows
        per_row = (shared.t() * 10 + torch.arange(rows).unsqueeze(1)).unsqueeze(-1)  # (rows, M, 1)
        topk.update(scores, shared, per_row)
        for row in range(rows):
            for column in range(chunk):
                if scores[row, column] > -torch.inf:
                    seen[row].append((float(scores[row, column]), counter + column))
        counter += chunk
    assert not topk.valid[0].any()
    for row in range(1, rows):
        expected = sorted(seen[row], reverse=True)[:k]
        assert topk.scores[row].tolist() == pytest.approx([score for score, _ in expected])
        assert topk.payloads[0][row, :, 0].tolist() == [ident for _, ident in expected]
        assert topk.payloads[1][row, :, 0].tolist() == [ident * 10 + row for _, ident in expected]


# -- similarity ---------------------------------------------------------------------------------------
def test_similarity_maps_are_the_heads_similarities(trained, reference):
    embed, prototypes = reference
    head = prototype_head(trained.model, trained.run_dir, "similarity")
    sample = load_sample(trained.dataset, 0)
    maps = similarity_maps(trained.model, head, sample["image"])
    num_classes, num_prototypes, height, width = maps.shape
    assert (num_classes, num_prototypes) == (NUM_CLASSES, NUM_PROTOTYPES)
    embeddings = embed(0)
    expected = torch.empty(num_classes, num_prototypes, height, width, dtype=torch.float64)
    for c in range(num_classes):
        for k in range(num_prototypes):
            for y in range(height):
                for x in range(width):
                    expected[c, k, y, x] = (embeddings[y, x] * prototypes[c, k]).sum()
    torch.testing.assert_close(maps.double(), expected, atol=1e-4, rtol=0)
    # the per-pixel nearest prototype agrees wherever the two best are not tied
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    assert torch.equal(maps.argmax(dim=1)[clear], expected.argmax(dim=1)[clear])
    # the head's own class scores are mask_norm(max_k S): the maps are what it classifies with
    with torch.no_grad():
        logits = trained.model(sample["image"])["logits"][0]
        rebuilt = head.mask_norm(maps.amax(dim=1).permute(1, 2, 0)).permute(2, 0, 1)
    torch.testing.assert_close(rebuilt, logits, atol=1e-4, rtol=0)


def test_similarity_figure_draws_those_maps(trained):
    head = prototype_head(trained.model, trained.run_dir, "similarity")
    sample = load_sample(trained.dataset, 1)
    maps = similarity_maps(trained.model, head, sample["image"])
    classes = sorted({int(v) for v in np.unique(sample["mask"]) if v < NUM_CLASSES})
    figure = draw_similarity(
        sample["rgb"], sample["mask"], maps, classes, trained.class_names, sample["name"]
    )
    panels = {axes.get_label(): axes for axes in figure.axes}
    small = _nearest_labels(sample["mask"], *maps.shape[-2:])
    for c in classes:
        for k in range(NUM_PROTOTYPES):
            panel = panels[f"similarity/{c}/{k}"]
            np.testing.assert_array_equal(np.asarray(panel.images[0].get_array()), maps[c, k].numpy())
            assert trained.class_names[c] in panel.get_title() and f"prototype {k}" in panel.get_title()
        nearest = panels[f"nearest/{c}"].images[-1].get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(nearest), small != c)
        np.testing.assert_array_equal(nearest.compressed(), maps[c].argmax(dim=0).numpy()[small == c])
    assert sum(1 for axes in figure.axes if axes.get_label() == "<colorbar>") == 2 * len(classes)


def test_similarity_cli_writes_pngs_of_the_layout_size(proto_run, trained, tmp_path, capsys):
    code, paths, _ = _run_cli(
        capsys, "similarity", proto_run, "--images", "1", "--classes", "background,Disc", "--out", tmp_path
    )
    assert code == 0
    assert [Path(path).name for path in paths] == [f"similarity_{trained.dataset.names[0]}.png"]
    for path in paths:
        assert _png_size(path) == figure_pixels(*similarity_figure_inches(2, NUM_PROTOTYPES))
    name = trained.dataset.names[3]
    code, paths, _ = _run_cli(capsys, "similarity", proto_run, "--names", name, "--classes", "1")
    assert code == 0 and paths == [str(proto_run / "viz" / f"similarity_{name}.png")]
    assert _png_size(paths[0]) == figure_pixels(*similarity_figure_inches(1, NUM_PROTOTYPES))


def test_bad_input_gives_clear_errors(proto_run, linear_run, tmp_path, capsys):
    code, _, err = _run_cli(capsys, "similarity", proto_run, "--classes", "zebra", "--out", tmp_path)
    assert code == 2 and "unknown class 'zebra'" in err and "disc" in err
    code, _, err = _run_cli(capsys, "similarity", proto_run, "--names", "nope", "--out", tmp_path)
    assert code == 2 and "image 'nope'" in err
    for command in ("similarity", "exemplars"):
        code, _, err = _run_cli(capsys, command, linear_run, "--out", tmp_path)
        assert code == 2 and "LinearHead" in err and "no prototypes" in err, err
    code, _, err = _run_cli(capsys, "predictions", proto_run, "--set", "model.method=cam", "--out", tmp_path)
    assert code == 2 and "model.method=cam" in err and "visualize cams" in err
    code, _, err = _run_cli(capsys, "similarity", tmp_path / "missing_run")
    assert code == 2 and "missing_run" in err
    code, _, err = _run_cli(capsys, "curves", tmp_path)
    assert code == 2 and "metrics.jsonl" in err
    assert list(tmp_path.glob("*.png")) == []


# -- exemplars ----------------------------------------------------------------------------------------
def test_exemplar_scores_are_the_max_similarity_on_their_patch(trained, reference):
    embed, prototypes = reference
    head = prototype_head(trained.model, trained.run_dir, "exemplars")
    top, patch = 3, 16
    exemplars = find_exemplars(trained.model, head, trained.dataset, top=top, patch=patch)
    num_images = len(trained.dataset)
    assert (
        exemplars.scores.shape == (NUM_CLASSES * NUM_PROTOTYPES, top) and exemplars.num_images == num_images
    )
    image_best = {}  # (image, row) -> best similarity over the whole image
    for index in range(num_images):
        embeddings = embed(index)
        for row in range(NUM_CLASSES * NUM_PROTOTYPES):
            prototype = prototypes.reshape(-1, prototypes.shape[-1])[row]
            image_best[index, row] = float((embeddings @ prototype).max())
    for row in range(NUM_CLASSES * NUM_PROTOTYPES):
        prototype = prototypes.reshape(-1, prototypes.shape[-1])[row]
        # streaming top-k over the split == sorting every image's best
        expected = sorted((image_best[index, row] for index in range(num_images)), reverse=True)[:top]
        assert exemplars.scores[row].tolist() == pytest.approx(expected, abs=1e-4)
        for slot in range(top):
            box = exemplars.boxes[row, slot].tolist()
            embeddings = embed(box[IMAGE])
            height, width = embeddings.shape[:2]
            image_height, image_width = trained.dataset.load_raw(box[IMAGE])[1].shape
            assert box[BOTTOM] - box[TOP] == patch and box[RIGHT] - box[LEFT] == patch
            inside = []
            for y in range(height):
                for x in range(width):
                    centre_y, centre_x = (y + 0.5) * image_height / height, (x + 0.5) * image_width / width
                    if box[TOP] <= centre_y < box[BOTTOM] and box[LEFT] <= centre_x < box[RIGHT]:
                        inside.append(float((embeddings[y, x] * prototype).sum()))
            assert max(inside) == pytest.approx(float(exemplars.scores[row, slot]), abs=1e-4)
            assert box[TOP] <= box[CENTRE_Y] < box[BOTTOM] and box[LEFT] <= box[CENTRE_X] < box[RIGHT]

    crops, centre_labels = crop_exemplars(trained.dataset, exemplars)
    box = exemplars.boxes[5, 0].tolist()
    rgb, mask = trained.dataset.load_raw(box[IMAGE])
    np.testing.assert_array_equal(
        crops[5, 0], np.asarray(rgb)[box[TOP] : box[BOTTOM], box[LEFT] : box[RIGHT]]
    )
    assert centre_labels[5, 0] == mask[box[CENTRE_Y], box[CENTRE_X]]
    figure = draw_exemplars(exemplars, crops, centre_labels, 1, trained.class_names, "val")
    panel = next(axes for axes in figure.axes if axes.get_label() == "exemplar/1/2/0")
    np.testing.assert_array_equal(panel.images[0].get_array(), crops[1 * NUM_PROTOTYPES + 2, 0])
    assert f"{float(exemplars.scores[1 * NUM_PROTOTYPES + 2, 0]):.3f}" in panel.get_title()


def test_exemplars_cli_one_grid_per_class(proto_run, tmp_path, capsys):
    code, paths, _ = _run_cli(
        capsys,
        "exemplars",
        proto_run,
        *("--top", "2", "--patch", "8", "--classes", "disc,0", "--no-progress", "--out", tmp_path),
    )
    assert code == 0
    assert [Path(path).name for path in paths] == ["exemplars_01_disc.png", "exemplars_00_background.png"]
    assert _png_size(paths[1]) == figure_pixels(*exemplar_figure_inches(NUM_PROTOTYPES, 2))


# -- embeddings ---------------------------------------------------------------------------------------
def test_embedding_sample_is_the_heads_embeddings_balanced_by_class(trained, reference):
    embed, prototypes = reference
    head = prototype_head(trained.model, trained.run_dir, "embeddings")
    per_class = 10
    sample = sample_pixel_embeddings(
        trained.model,
        trained.dataset,
        NUM_CLASSES,
        pixels=per_class * NUM_CLASSES,
        head=head,
        generator=torch.Generator().manual_seed(0),
    )
    available = np.zeros(NUM_CLASSES, dtype=np.int64)
    for index in range(len(trained.dataset)):
        height, width = embed(index).shape[:2]
        labels = _nearest_labels(trained.dataset.load_raw(index)[1], height, width)
        for c in range(NUM_CLASSES):
            available[c] += int((labels == c).sum())
    counts = np.bincount(sample.labels.numpy(), minlength=NUM_CLASSES)
    np.testing.assert_array_equal(counts, np.minimum(available, per_class))
    pairs = set(zip(sample.image_index.tolist(), sample.pixel_index.tolist()))
    assert len(pairs) == len(sample.labels)
    for vector, label, index, pixel in zip(
        sample.embeddings, sample.labels, sample.image_index, sample.pixel_index
    ):
        embeddings = embed(int(index))
        height, width = embeddings.shape[:2]
        y, x = divmod(int(pixel), width)
        torch.testing.assert_close(vector.double(), embeddings[y, x], atol=1e-5, rtol=0)
        mask = trained.dataset.load_raw(int(index))[1]
        assert _nearest_labels(mask, height, width)[y, x] == int(label)
    torch.testing.assert_close(sample.prototypes.double(), prototypes.reshape(-1, prototypes.shape[-1]))

    # PCA against numpy's float64 SVD, and the plotted stars are the head's prototypes in that plane
    projection = pca_2d(sample.embeddings, sample.prototypes)
    points = sample.embeddings.double().numpy()
    mean = points.mean(axis=0)
    _, _, right = np.linalg.svd(points - mean, full_matrices=False)
    expected_points = (points - mean) @ right[:2].T
    expected_prototypes = (prototypes.reshape(-1, prototypes.shape[-1]).numpy() - mean) @ right[:2].T
    signs = np.sign((projection.points.numpy() * expected_points).sum(axis=0))
    np.testing.assert_allclose(projection.points.numpy(), expected_points * signs, atol=1e-4)
    figure = draw_embeddings(sample, projection, trained.class_names, trained.palette)
    axes = figure.axes[0]
    stars = next(collection for collection in axes.collections if collection.get_label() == "prototypes")
    np.testing.assert_allclose(stars.get_offsets(), expected_prototypes * signs, atol=1e-4)
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert any(text.startswith("disc (") for text in legend) and "prototype (class colour)" in legend


def test_embeddings_cli_pca_and_linear_run(proto_run, linear_run, tmp_path, capsys):
    code, paths, _ = _run_cli(
        capsys, "embeddings", proto_run, "--pixels", "110", "--no-progress", "--out", tmp_path
    )
    assert code == 0 and [Path(path).name for path in paths] == ["embeddings_val_pca.png"]
    assert _png_size(paths[0]) == figure_pixels(10.0, 7.5)
    code, paths, out_err = _run_cli(
        capsys, "embeddings", linear_run, "--pixels", "110", "--no-progress", "--out", tmp_path / "linear"
    )
    assert code == 0 and len(paths) == 1
    try:
        import sklearn  # noqa: F401
    except ImportError:
        code, _, err = _run_cli(capsys, "embeddings", proto_run, "--method", "tsne", "--out", tmp_path)
        assert code == 2 and "scikit-learn" in err and "--method pca" in err


# -- predictions --------------------------------------------------------------------------------------
def test_prediction_panels_show_the_models_argmax(trained, proto_run, tmp_path, capsys):
    sample = load_sample(trained.dataset, 2)
    labels = predict_labels(trained.model, trained.cfg, sample["image"], trained.num_classes)
    with torch.no_grad():
        expected = trained.model.predict(sample["image"])[0].argmax(dim=0).numpy()
    np.testing.assert_array_equal(labels, expected)
    figure = draw_prediction(sample["rgb"], sample["mask"], labels, trained.class_names, trained.palette, "x")
    panels = {axes.get_label(): axes for axes in figure.axes}
    shown = np.asarray(panels["prediction"].images[0].get_array())
    for y in range(0, labels.shape[0], 7):
        for x in range(0, labels.shape[1], 7):
            assert tuple(shown[y, x]) == tuple(SHAPES_PALETTE[labels[y, x]])
    errors = np.asarray(panels["errors"].images[0].get_array())
    wrong = (sample["mask"] != 255) & (sample["mask"] != labels)
    assert (np.all(errors[wrong] == (220, 30, 30), axis=-1)).all()
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    for value in np.unique(np.concatenate([labels.ravel(), sample["mask"].ravel()])):
        if value < NUM_CLASSES:
            assert SHAPES_CLASS_NAMES[value] in legend
    name = sample["name"]
    code, paths, _ = _run_cli(capsys, "predictions", proto_run, "--names", name, "--out", tmp_path)
    assert code == 0 and [Path(path).name for path in paths] == [f"prediction_{name}.png"]
    present = len((set(np.unique(labels)) | set(np.unique(sample["mask"]))) - {255})
    assert _png_size(paths[0]) == figure_pixels(*prediction_figure_inches(present))


# -- curves -------------------------------------------------------------------------------------------
def test_curves_and_per_class_iou(proto_run, tmp_path, capsys):
    eval_json = tmp_path / "eval.json"
    assert main(["eval", str(proto_run), "--json", "--out", str(eval_json)]) == 0
    capsys.readouterr()
    code, paths, _ = _run_cli(capsys, "curves", proto_run, "--eval-json", eval_json, "--out", tmp_path)
    assert code == 0 and [Path(path).name for path in paths] == ["curves.png", "per_class_iou.png"]
    records = [json.loads(line) for line in (proto_run / "metrics.jsonl").read_text().splitlines()]
    terms = {key for record in records if record["split"] == "train" for key in record} - {
        "split",
        "iteration",
        "lr",
        "seconds_per_iter",
    }
    assert {"loss", "ce", "proto_contrast", "proto_distance"} <= terms
    assert _png_size(paths[0]) == figure_pixels(*curves_figure_inches(len(terms) + 3))
    assert _png_size(paths[1]) == figure_pixels(*per_class_figure_inches(NUM_CLASSES))
    metrics = json.loads(eval_json.read_text())
    figure = draw_per_class_iou(metrics)
    axes = figure.axes[0]
    widths = [patch.get_width() for patch in axes.patches]
    expected = [
        0.0 if entry["iou"] is None or np.isnan(entry["iou"]) else entry["iou"]
        for entry in metrics["per_class"]
    ]
    assert widths == pytest.approx(expected)
    assert [label.get_text() for label in axes.get_yticklabels()] == list(SHAPES_CLASS_NAMES)


# -- CAMs ---------------------------------------------------------------------------------------------
def test_cams_cli_with_pseudo_labels(shapes_root, tmp_path, capsys):
    from protoseg.data import build_dataset

    dataset = build_dataset("voc", shapes_root, "train")
    cam_dir, pseudo_dir = tmp_path / "cams", tmp_path / "pseudo"
    for index in range(3):
        _, mask = dataset.load_raw(index)
        tags = dataset[index]["tags"]
        cams = np.stack([(mask == c + 1).astype(np.float32) * 0.9 for c in range(NUM_CLASSES - 1)])
        save_cam(cam_path(cam_dir, dataset.names[index]), cams, tags)
    write_pseudo_labels(cam_dir, pseudo_dir, 0.3, SHAPES_PALETTE, ignore_band=None, progress=False)
    code, paths, _ = _run_cli(
        capsys, "cams", cam_dir, "--data", shapes_root, "--pseudo", pseudo_dir, "--images", "2"
    )
    assert code == 0 and paths == [str(cam_dir / "viz" / f"cam_{name}.png") for name in dataset.names[:2]]
    record = load_cam(cam_path(cam_dir, dataset.names[0]))
    rgb, mask = dataset.load_raw(0)
    pseudo = np.array(Image.open(pseudo_dir / f"{dataset.names[0]}.png"))
    legend_classes = len((set(np.unique(mask)) | set(np.unique(pseudo))) - {255})
    assert _png_size(paths[0]) == figure_pixels(*cam_figure_inches(len(record.class_indices), legend_classes))

    names = list(SHAPES_CLASS_NAMES[1:])
    figure = draw_cams(np.asarray(rgb), record, names, "x", mask, pseudo, SHAPES_CLASS_NAMES, SHAPES_PALETTE)
    panels = {axes.get_label(): axes for axes in figure.axes}
    for class_index, cam in zip(record.class_indices, record.cams):
        panel = panels[f"cam/{class_index}"]
        np.testing.assert_array_equal(panel.images[1].get_array(), cam)
        assert names[class_index] in panel.get_title()

    code, _, err = _run_cli(capsys, "cams", tmp_path / "no_cams", "--data", shapes_root)
    assert code == 2 and "CAM folder not found" in err and "no_cams" in err
    code, _, err = _run_cli(capsys, "cams", cam_dir, "--data", shapes_root, "--names", "train_99999")
    assert code == 2 and "train_99999" in err


# -- no display ---------------------------------------------------------------------------------------
def test_runs_without_a_display_and_never_imports_pyplot(proto_run, tmp_path):
    environment = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "MPLBACKEND")}
    environment["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + environment.get("PYTHONPATH", "")
    environment["OMP_NUM_THREADS"] = "1"
    script = (
        "import sys\n"
        "from protoseg.cli import main\n"
        f"code = main(['visualize', 'curves', {str(proto_run)!r}, '--out', {str(tmp_path)!r}])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").is_file()
