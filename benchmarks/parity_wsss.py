"""Loss-level parity of protoseg's WSSS bases and PPC with the released code, on the same tensors.

The releases are loaded from checkouts given by path (never copied here):

    SEAM_RELEASE=/path/to/SEAM EPS_RELEASE=/path/to/EPS PPC_EPS_RELEASE=/path/to/wseg-eps \\
        python benchmarks/parity_wsss.py [--json]

- SEAM (github YudeWang/SEAM): ``max_norm`` (tool/visualization.py), ``max_onehot`` and
  ``adaptive_min_pooling_loss`` (train_SEAM.py), the PCM (``Net.PCM`` of network/resnet38_SEAM.py, run
  with protoseg's ``f9`` weights) against :mod:`protoseg.losses.seam` / :mod:`protoseg.models.seam`;
- EPS (github halbielee/EPS): ``get_eps_loss`` (eps.py) against :func:`protoseg.losses.eps.saliency_loss`
  (the release's background channel is the last one; protoseg's the first);
- PPC (github usr922/wseg, EPS-based branch, whose ``get_contrast_loss`` in module/train.py is the
  master branch's inline contrast as a function): the whole contrast against
  :class:`protoseg.losses.ppc.PixelToPrototypeContrast` (``mining="released"``). The release samples
  pixels with ``random.sample``; the inputs here give every pixel of a pseudo-class the same embedding,
  so that any sample gives the same loss, and put background pixels first, where the release's top-K
  of a constant background score picks its prototype pixels.

Heavy imports of the releases (cv2, pydensecrf, tensorboardX, their data modules) are stubbed, and
``Tensor.cuda`` returns the tensor itself without CUDA (in this process only). Prints the largest
absolute difference of each check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protoseg.losses.eps import saliency_loss  # noqa: E402
from protoseg.losses.ppc import PixelToPrototypeContrast  # noqa: E402
from protoseg.losses.seam import adaptive_min_pooling_loss, max_norm, max_onehot  # noqa: E402
from protoseg.models.seam import PixelCorrelationModule  # noqa: E402

STUBS = (
    "cv2", "pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils", "tensorboardX", "imageio", "scipy",
    "scipy.misc", "torchvision", "torchvision.transforms",
)  # fmt: skip


def _stub_modules() -> None:
    for name in STUBS:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__getattr__ = lambda attribute: None  # any name imported from a stub is None
            sys.modules[name] = module
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self


def _import_from(root: str | None, env: str, *modules: str) -> list[types.ModuleType]:
    path = Path(root or os.environ.get(env, ""))
    if not (path / (modules[0].replace(".", "/") + ".py")).is_file():
        raise SystemExit(f"parity_wsss: set {env} to a checkout holding {modules[0].replace('.', '/')}.py")
    _stub_modules()
    packages = ("tool", "network", "voc12", "util", "eps", "module")
    for name in [n for n in sys.modules if n.split(".")[0] in packages]:
        del sys.modules[name]  # another release's package of the same name
    sys.path.insert(0, str(path))
    try:
        return [importlib.import_module(module) for module in modules]
    finally:
        sys.path.remove(str(path))


def seam_checks(root: str | None) -> dict[str, float]:
    train, visualization, network = _import_from(
        root, "SEAM_RELEASE", "train_SEAM", "tool.visualization", "network.resnet38_SEAM"
    )
    generator = torch.Generator().manual_seed(0)
    cam = torch.randn(2, 21, 14, 14, generator=generator)
    results = {
        "max_norm": (visualization.max_norm(cam.clone()) - max_norm(cam)).abs().max().item(),
        "max_onehot": (train.max_onehot(cam.clone()) - max_onehot(cam)).abs().max().item(),
        "adaptive_min_pooling": abs(
            train.adaptive_min_pooling_loss(cam[:, 1:]).item() - adaptive_min_pooling_loss(cam[:, 1:]).item()
        ),
    }
    torch.manual_seed(0)
    pcm = PixelCorrelationModule(512, 1024)
    images = torch.randn(2, 3, 14, 14, generator=generator)
    low, high = (
        torch.randn(2, 512, 14, 14, generator=generator),
        torch.randn(2, 1024, 14, 14, generator=generator),
    )
    seed = torch.rand(2, 21, 14, 14, generator=generator)
    features = torch.cat([images, F.relu(pcm.f8_3(low)), F.relu(pcm.f8_4(high))], dim=1)
    with torch.no_grad():
        released = network.Net.PCM(types.SimpleNamespace(f9=pcm.f9), seed, features)
        ours = pcm(seed, images, low, high)
    results["pcm"] = (released - ours).abs().max().item()
    return results


def eps_checks(root: str | None) -> dict[str, float]:
    (eps,) = _import_from(root, "EPS_RELEASE", "eps")
    generator = torch.Generator().manual_seed(0)
    results = {}
    for tau in (0.2, 0.5):
        cam_last = torch.randn(4, 21, 28, 28, generator=generator) * 3  # background last (the release)
        saliency = torch.rand(4, 1, 56, 56, generator=generator)
        tags = (torch.rand(4, 20, generator=generator) > 0.8).float()
        released = eps.get_eps_loss(cam_last, saliency, 20, tags, tau, 0.5, intermediate=False)
        cam_first = torch.cat([cam_last[:, -1:], cam_last[:, :-1]], dim=1)
        ours = saliency_loss(cam_first, saliency, tags, tau=tau, lam=0.5)["loss"]
        results[f"saliency_loss_tau{tau}"] = abs(released.item() - ours.item())
    return results


def ppc_inputs(generator: torch.Generator):
    """Two 16 x 16 views of 7 images, 20 classes + background (last: the release's layout), every class
    tagged in some image (the release computes all 21 prototypes; protoseg leaves classes without a tag
    in the batch out of the softmax): per pixel a pseudo-class, a CAM peaking at it, and the embedding of
    its class (the same for all its pixels)."""
    batch, size, classes = 7, 16, 21
    labels = torch.randint(0, 4, (batch, size, size), generator=generator)  # 0: background, 1-3: classes
    labels[:, :4] = 0  # background first in pixel order (the release's top-K of a constant picks these)
    present = torch.arange(21).remainder(20).view(7, 3)  # foreground class ids (0-based, of 20) per image
    table = F.normalize(torch.randn(classes, 128, generator=generator), dim=1)
    cams, features = [], []
    for view in range(2):
        cam = torch.zeros(batch, classes, size, size)
        feature = torch.zeros(batch, 128, size, size)
        view_table = F.normalize(table + 0.7 * torch.randn(table.shape, generator=generator), dim=1)
        for b in range(batch):
            for k in range(1, 4):
                where = labels[b] == k
                cam[b, present[b, k - 1], where] = 1.0 + view * 0.1
                feature[b, :, where] = view_table[present[b, k - 1]][:, None]
            feature[b, :, labels[b] == 0] = view_table[-1][:, None]
        cams.append(cam)
        features.append(feature + 0.0)
    tags = torch.zeros(batch, 20)
    for b in range(batch):
        tags[b, present[b]] = 1.0
    return cams, features, tags


def ppc_checks(root: str | None) -> dict[str, float]:
    (train,) = _import_from(root, "PPC_EPS_RELEASE", "module/train".replace("/", "."))
    generator = torch.Generator().manual_seed(0)
    (cam_s, cam_t), (feat_s, feat_t), tags = ppc_inputs(generator)
    released = train.get_contrast_loss(cam_s, cam_t, feat_s, feat_t, tags, gamma=0.1, bg_thres=0.1)
    first = lambda cam: torch.cat([cam[:, -1:], cam[:, :-1]], dim=1)  # noqa: E731
    contrast = PixelToPrototypeContrast(
        temperature=0.1,
        top_k=16 * 16 // 16,
        bg_threshold=0.1,
        cross_weight=0.1,
        intra_weight=0.1,
        mining="released",
    )
    ours = contrast(first(cam_s), feat_s, first(cam_t), feat_t, tags)
    return {"contrast_total": abs(float(released) - ours["loss"].item()), "released": float(released),
            "protoseg": ours["loss"].item()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seam", help="SEAM checkout (default: $SEAM_RELEASE)")
    parser.add_argument("--eps", help="EPS checkout (default: $EPS_RELEASE)")
    parser.add_argument("--ppc-eps", help="wseg EPS-based checkout (default: $PPC_EPS_RELEASE)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {"seam": seam_checks(args.seam), "eps": eps_checks(args.eps), "ppc": ppc_checks(args.ppc_eps)}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for release, checks in results.items():
            for name, value in checks.items():
                print(f"{release:5s} {name:28s} {value:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
