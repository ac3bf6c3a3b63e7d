"""Predict masks for image files: palette PNGs of class indices and colour overlays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import Config
from ..data.palette import colour_labels, save_label_png
from ..ops.inference import InferenceSettings, predict_probabilities

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly, or found (sorted) inside the named folders."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input image or folder not found: {path}")
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


@torch.no_grad()
def predict_files(
    model: torch.nn.Module,
    cfg: Config,
    meta: dict,
    images: list[Path],
    out_dir: Path,
    device: torch.device,
) -> list[Path]:
    """Write ``<stem>.png`` (palette PNG, input size) and ``<stem>_overlay.jpg`` for each image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = InferenceSettings.from_config(cfg.eval, cfg.data.crop_size)
    written = []
    for path in images:
        image, tensor = load_image_tensor(path, cfg.data.mean, cfg.data.std)
        probabilities = predict_probabilities(model.predict, tensor.to(device), meta["num_classes"], settings)
        labels = probabilities.argmax(1)[0].cpu().numpy().astype(np.uint8)
        mask_path = out_dir / f"{path.stem}.png"
        save_label_png(mask_path, labels, meta["palette"])
        overlay(image, labels, meta["palette"]).save(out_dir / f"{path.stem}_overlay.jpg", quality=92)
        written.append(mask_path)
    return written
