"""Parity of protoseg's RCA and OAA with the released code, on the same weights and tensors.

The releases are loaded from checkouts given by path (never copied here):

    RCA_RELEASE=/path/to/RCA OAA_RELEASE=/path/to/OAA-PyTorch python benchmarks/parity_rca.py [--json]

- RCA (github maeve07/RCA, ``models/rca.py: RCAModel``) run forward on a small 512-channel feature
  extractor, against :class:`protoseg.models.rca.RCANetwork` with ``aggregation``, ``head``,
  ``query_projection`` and ``region_mask`` all ``released`` and the release's weights copied in: the
  aggregated features (the output of its ``concat_project``), both heads' class scores, the region-mixup
  contrast (``loss_cl_mixup``) against :class:`protoseg.losses.region_contrast.RegionContrastLoss` with
  ``reduction="released"`` given the release's own draws (its ``torch.randperm`` partners and
  ``np.random.beta`` weights, recorded), and the memory update (``_dequeue_and_enqueue``) against
  :class:`protoseg.prototypes.RegionMemory` on single-tag images (see the note on multi-tag images);
- OAA (github PengtaoJiang/OAA-PyTorch, ``models/vgg.py: VGG.forward``'s accumulation, top-|tags|
  filter) and RCA's copy of it (``RCAModel.forward``, probability filter) run over several epochs of a
  few images, writing their PNGs, against :class:`protoseg.methods.oaa.OAAMethod`'s accumulation given the
  same CAMs (identity frames, the CAM's own grid): the accumulated 8-bit maps, level by level.

Stubs: ``cv2`` (imwrite / imread of 8-bit grey PNGs through PIL, float arrays rounded half to even and
saturated as OpenCV converts them), ``sklearn.cluster.KMeans`` (the centroids are set by hand here) and
``Tensor.cuda`` (returns the tensor itself without CUDA, in this process only). Prints the largest absolute
difference of each check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protoseg.losses.region_contrast import RegionContrastLoss  # noqa: E402
from protoseg.methods.base import RunInfo  # noqa: E402
from protoseg.methods.oaa import OAAMethod  # noqa: E402
from protoseg.models.rca import RCANetwork  # noqa: E402
from protoseg.ops.pooling import masked_average_pool  # noqa: E402
from protoseg.prototypes import RegionMemory  # noqa: E402
from protoseg.prototypes.attention_store import map_path, read_maps  # noqa: E402

CLASSES, PROTOTYPES, QUEUE, DIM = 20, 10, 500, 512


# -- loading the releases ------------------------------------------------------------------------------
def _fake_cv2() -> types.ModuleType:
    module = types.ModuleType("cv2")

    def imwrite(path, array):
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[:, :, 0]
        if array.dtype != np.uint8:  # OpenCV's convertTo: round half to even, saturate
            array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        Image.fromarray(array, mode="L").save(path)
        return True

    def imread(path, flags=1):
        with Image.open(path) as image:
            return np.array(image.convert("L"))

    module.imwrite, module.imread = imwrite, imread
    return module


def _stub_modules() -> None:
    sys.modules.setdefault("cv2", _fake_cv2())
    if "sklearn" not in sys.modules:
        sklearn, cluster = types.ModuleType("sklearn"), types.ModuleType("sklearn.cluster")

        class KMeans:  # the harness sets the centroids itself; a fit keeps the first rows
            def __init__(self, n_clusters=8, **kwargs):
                self.n_clusters = n_clusters

            def fit(self, data):
                self.cluster_centers_ = np.asarray(data)[: self.n_clusters]
                return self

        cluster.KMeans = KMeans
        sklearn.cluster = cluster
        sys.modules["sklearn"], sys.modules["sklearn.cluster"] = sklearn, cluster
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self


def _import_from(root: str | None, env: str, module: str) -> types.ModuleType:
    path = Path(root or os.environ.get(env, ""))
    if not (path / (module.replace(".", "/") + ".py")).is_file():
        raise SystemExit(f"parity_rca: set {env} to a checkout holding {module.replace('.', '/')}.py")
    _stub_modules()
    for name in [n for n in sys.modules if n.split(".")[0] in ("models", "utils")]:
        del sys.modules[name]  # the other release's package of the same name
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(path))


class Levels(nn.Module):
    """A backbone for protoseg: the release's feature extractor, its output as the one level."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.out_channels = [DIM]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.features(images)]


def small_features() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, DIM, 4, stride=4), nn.ReLU())


def protoseg_network(released: nn.Module) -> RCANetwork:
    """RCANetwork with the release's parts and the release's weights."""
    network = RCANetwork(
        Levels(released.features), CLASSES, PROTOTYPES, aggregation="released", region_mask="released",
        head="released", query_projection="released",
    )  # fmt: skip
    aggregation = network.aggregation
    for ours, theirs in (
        (aggregation.query, released.Q),
        (aggregation.key, released.K),
        (aggregation.value, released.V),
        (aggregation.aggregate, released.aggre),
        (aggregation.project, released.concat_project),
    ):
        ours.load_state_dict(theirs.state_dict())
    network.aux_head.load_state_dict(released.extra_convs.state_dict())
    network.query_projection.load_state_dict(released.extra_F.state_dict())
    stacks = [getattr(released, f"extra_convs{c}") for c in range(CLASSES)]
    with torch.no_grad():
        for index in (0, 2, 4, 6):  # one grouped layer holds every class's layer
            network.head[index].weight.copy_(torch.cat([stack[index].weight for stack in stacks]))
            network.head[index].bias.copy_(torch.cat([stack[index].bias for stack in stacks]))
    clusters = torch.stack([getattr(released, f"cluter{c}") for c in range(CLASSES)])
    aggregation.set_prototypes(clusters)
    return network


# -- RCA ---------------------------------------------------------------------------------------------
def rca_checks(root: str | None) -> dict[str, float]:
    rca = _import_from(root, "RCA_RELEASE", "models.rca")
    torch.manual_seed(0)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as folder:
        released = rca.RCAModel(small_features(), CLASSES, att_dir=folder, training_epoch=3)
    released.train()
    with torch.no_grad():  # confident classes 3, 7 and 11, so that the memory update writes them
        for c in (3, 7, 11):
            getattr(released, f"extra_convs{c}")[6].bias.add_(3.0)
    network = protoseg_network(released)
    network.train()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 16, 16, generator=generator)
    label = torch.zeros(4, CLASSES)
    for b, classes in enumerate(([3], [5, 11], [3, 7], [11])):
        label[b, classes] = 1.0

    captured, draws = {}, {"perm": [], "beta": []}
    released.concat_project.register_forward_hook(lambda m, i, o: captured.__setitem__("aggregated", o))
    original_randperm, original_beta = torch.randperm, np.random.beta

    def randperm(n, *args, **kwargs):
        draws["perm"].append(original_randperm(n, *args, **kwargs))
        return draws["perm"][-1]

    def beta(a, b, *args, **kwargs):
        draws["beta"].append(float(original_beta(a, b, *args, **kwargs)))
        return draws["beta"][-1]

    memory_before = torch.stack([getattr(released, f"queue{c}").clone() for c in range(CLASSES)])
    torch.randperm, np.random.beta = randperm, beta
    try:
        xss, xs, loss_released = released(images, label, epoch=0, index=None)
    finally:
        torch.randperm, np.random.beta = original_randperm, original_beta
    memory_after = torch.stack([getattr(released, f"queue{c}").clone() for c in range(CLASSES)])

    outputs = network(images)
    results = {
        "aggregated_features": (network.aggregation(outputs["features"]) - captured["aggregated"])
        .abs()
        .max()
        .item(),
        "final_head_scores": (outputs["cams"].mean(dim=(2, 3)) - xs).abs().max().item(),
        "first_head_scores": (outputs["aux_cams"].mean(dim=(2, 3)) - xss).abs().max().item(),
    }

    # the contrast, with the release's draws: per tagged (image, class) in order, randperm(batch) picks
    # the partner image, randperm(its tags) its class, beta the weight
    memory = RegionMemory(CLASSES, DIM, QUEUE)
    with torch.no_grad():
        memory.memory.copy_(memory_before)
        memory.count.fill_(QUEUE)
    masks = network.region_masks(outputs["aux_cams"])
    queries = masked_average_pool(outputs["queries"], masks).reshape(4 * CLASSES, DIM)
    labels = torch.arange(CLASSES).repeat(4)
    valid = label.bool().reshape(-1) & (masks.sum(dim=(2, 3)) > 0).reshape(-1)
    partner = torch.arange(4 * CLASSES)
    weight = torch.ones(4 * CLASSES)
    step = 0
    for b in range(4):
        for c in torch.nonzero(label[b]).flatten().tolist():
            other = int(draws["perm"][2 * step][b])
            tags = torch.nonzero(label[other]).flatten()
            partner[b * CLASSES + c] = other * CLASSES + int(tags[draws["perm"][2 * step + 1][0]])
            weight[b * CLASSES + c] = draws["beta"][step]
            step += 1
    contrast = RegionContrastLoss(0.07, mixup_alpha=8.0, reduction="released")
    ours = contrast(queries, labels, valid, memory, images=torch.arange(4).repeat_interleave(CLASSES),
                    partner=partner, mix_weight=weight)  # fmt: skip
    results["mixup_contrast"] = abs(float(loss_released.detach()) - float(ours["loss"].detach()))
    results["mixup_contrast_released"] = float(loss_released.detach())
    results["mixup_contrast_protoseg"] = float(ours["loss"].detach())

    # the memory update: classes 3, 7 and 11 score above 0.7 (their final heads' biases were raised), the
    # others below; every tagged region is written in image order, blending into the full memory
    scores = torch.sigmoid(xs.detach())
    embeddings = masked_average_pool(outputs["features"], masks).reshape(4 * CLASSES, DIM).detach()
    with torch.no_grad():
        memory.pointer.zero_()
        memory.enqueue(embeddings, labels, scores.reshape(-1), 0.7, valid=label.bool().reshape(-1))
    # images 0 and 2 write class 3 (slots 0, 1), images 1 and 3 class 11; image 2 also writes class 7,
    # after class 3, which the release pools from features already multiplied by class 3's mask
    single = [(3, 0), (3, 1), (11, 0), (11, 1)]
    assert all(float(scores[b, c]) > 0.7 for b, c in ((0, 3), (2, 3), (1, 11), (3, 11), (2, 7)))
    results["memory_update"] = max(
        (memory.memory[c, s] - memory_after[c, s]).abs().max().item() for c, s in single
    )
    results["memory_update_second_class_of_an_image"] = (
        (memory.memory[7, 0] - memory_after[7, 0]).abs().max().item()
    )
    return results


# -- OAA accumulation ------------------------------------------------------------------------------------
def accumulate_ours(steps: list[dict], folder: Path, epochs: int, images: int, mode: str) -> Path:
    """protoseg's OAA accumulation given the releases' CAMs, step by step."""
    method = OAAMethod(_CamNetwork(), start_epoch=1, filter=mode, min_probability=0.1)
    per_epoch = len(steps) // epochs
    method.attach_run(RunInfo(folder, per_epoch, len(steps), sample_names=tuple(map(str, range(images)))))
    for iteration, step in enumerate(steps):
        cams, label, index = step["cams"], step["label"], step["index"]
        size = cams.shape[-2:]
        batch = {
            "image": torch.zeros(len(cams), 3, *size),
            "tags": label,
            "index": torch.arange(index, index + len(cams)),
            "frame": torch.tensor([[1.0, 0.0, 1.0, 0.0, size[0], size[1]]] * len(cams)),
        }
        method.track(batch, cams)
        method.after_step(iteration)
        method.refresh()
    return folder / "oaa"


class _CamNetwork(nn.Module):
    """The least a base needs of a network (the CAMs come from the releases)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        self.num_classes = CLASSES


def compare_maps(release_dir: Path, ours_dir: Path, images: int, label_of) -> dict[str, float]:
    largest, compared, missing = 0, 0, 0
    for image in range(images):
        path = map_path(ours_dir, image)
        record = read_maps(path) if path.is_file() else None
        ours = dict(zip(record.classes.tolist(), record.maps)) if record is not None else {}
        for c in torch.nonzero(label_of(image)).flatten().tolist():
            theirs = release_dir / f"{image}_{c}.png"
            if theirs.is_file() != (c in ours):
                missing += 1
                continue
            if c in ours:
                with Image.open(theirs) as png:
                    level = torch.from_numpy(np.array(png.convert("L")).astype(np.int16))
                largest = max(largest, int((level - ours[c].to(torch.int16)).abs().max()))
                compared += 1
    return {"max_level_difference": float(largest), "maps_compared": compared, "maps_only_in_one": missing}


def oaa_checks(root: str | None, rca_root: str | None) -> dict[str, float]:
    vgg = _import_from(root, "OAA_RELEASE", "models.vgg")
    torch.manual_seed(0)
    images, batch, epochs = 6, 2, 4
    generator = torch.Generator().manual_seed(2)
    pictures = torch.randn(images, 3, 16, 16, generator=generator)
    label = torch.zeros(images, CLASSES)
    for b in range(images):
        label[b, torch.randperm(CLASSES, generator=generator)[: 1 + b % 3]] = 1.0
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = vgg.VGG(small_features(), CLASSES, accu_dir=str(folder / "released"), training_epoch=epochs)
        steps = []
        for epoch in range(epochs):
            with torch.no_grad():  # another network each epoch, so that the maps change
                for layer in model.extra_convs:
                    if isinstance(layer, nn.Conv2d):
                        layer.weight.normal_(0, 0.05, generator=generator)
            for index in range(0, images, batch):
                model(pictures[index : index + batch], epoch, label[index : index + batch], index)
                steps.append(
                    {"cams": model.map1.clone(), "label": label[index : index + batch], "index": index}
                )
        # map1 is ReLU-ed in place by the release after the step; the CAM's negative values do not matter
        ours = accumulate_ours(steps, folder / "ours", epochs, images, "top_tags")
        results["oaa"] = compare_maps(folder / "released", ours, images, lambda i: label[i])

    rca = _import_from(rca_root, "RCA_RELEASE", "models.rca")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = rca.RCAModel(
            small_features(), CLASSES, att_dir=str(folder / "released"), training_epoch=epochs
        )
        model.train()
        steps = []
        for epoch in range(epochs):
            with torch.no_grad():
                for c in range(CLASSES):
                    for layer in getattr(model, f"extra_convs{c}"):
                        if isinstance(layer, nn.Conv2d):
                            layer.weight.normal_(0, 0.03, generator=generator)
            for index in range(0, images, batch):
                with torch.no_grad():
                    model(pictures[index : index + batch], label[index : index + batch], epoch, index)
                steps.append(
                    {"cams": model.map.clone(), "label": label[index : index + batch], "index": index}
                )
        ours = accumulate_ours(steps, folder / "ours", epochs, images, "probability")
        results["rca_oaa"] = compare_maps(folder / "released", ours, images, lambda i: label[i])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rca", help="RCA checkout (default: $RCA_RELEASE)")
    parser.add_argument("--oaa", help="OAA-PyTorch checkout (default: $OAA_RELEASE)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {"rca": rca_checks(args.rca), **oaa_checks(args.oaa, args.rca)}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for release, checks in results.items():
            for name, value in checks.items():
                print(f"{release:8s} {name:32s} {value:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
