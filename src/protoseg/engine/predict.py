"""Predict masks for image files: palette PNGs of class indices and colour overlays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import Config
from ..data.palette import colour_labels, save_label_png
from ..files import OutputPlan, atomic_write, refuse_input_folder
from ..ops.inference import InferenceSettings, predict_probabilities

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly, or found (sorted) inside the named folders; a file named twice (also
    directly and through its folder) counts once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        elif path.is_file():
            found = [path]
        else:
            raise FileNotFoundError(f"input image or folder not found: {path}")
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append(file)
    return files


def overlay(image: Image.Image, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5):
    """Blend the colour-coded prediction over the image."""
    coloured = colour_labels(labels, palette)
    blended = (1 - alpha) * np.asarray(image.convert("RGB"), dtype=np.float32) + alpha * coloured
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def load_image_tensor(
    path: Path, mean: Sequence[float], std: Sequence[float]
) -> tuple[Image.Image, torch.Tensor]:
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    image = image.convert("RGB")
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    array = (array - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return image, array[None]


def plan_outputs(
    images: list[Path], out_dir: Path, inputs: Iterable[str | Path] = ()
) -> list[tuple[Path, Path, Path]]:
    """``(image, mask path, overlay path)`` per image, checked before anything is written: the outputs
    never replace an input (the images, ``inputs`` such as the checkpoint), ``out_dir`` is not a
    folder of input images, and no two images share an output (same stem from two folders or with two
    suffixes). ``ValueError`` naming the files otherwise."""
    refuse_input_folder(out_dir, {path.parent for path in images})
    plan = OutputPlan(inputs=[*images, *inputs], what="prediction")
    return [
        (
            path,
            plan.claim(out_dir / f"{path.stem}.png", source=path),
            plan.claim(out_dir / f"{path.stem}_overlay.jpg", source=path),
        )
        for path in images
    ]


@torch.no_grad()
def predict_files(
    model: torch.nn.Module,
    cfg: Config,
    meta: dict,
    images: list[Path],
    out_dir: Path,
    device: torch.device,
    inputs: Iterable[str | Path] = (),
    progress: bool = False,
) -> list[Path]:
    """Write ``<stem>.png`` (palette PNG, input size) and ``<stem>_overlay.jpg`` for each image, each
    file atomically (a crash or a full disk leaves no partial file). The outputs are checked first
    (:func:`plan_outputs`); ``inputs`` are further files that must not be overwritten."""
    planned = plan_outputs(images, out_dir, inputs)
    settings = InferenceSettings.from_config(cfg.eval, cfg.data.crop_size)
    written = []
    for path, mask_path, overlay_path in tqdm(
        planned, desc="predict", disable=not progress, dynamic_ncols=True
    ):
        image, tensor = load_image_tensor(path, cfg.data.mean, cfg.data.std)
        probabilities = predict_probabilities(model.predict, tensor.to(device), meta["num_classes"], settings)
        labels = probabilities.argmax(1)[0].cpu().numpy().astype(np.uint8)
        save_label_png(mask_path, labels, meta["palette"])
        blended = overlay(image, labels, meta["palette"])
        atomic_write(
            overlay_path, lambda file, picture=blended: picture.save(file, format="JPEG", quality=92)
        )
        written.append(mask_path)
    return written
