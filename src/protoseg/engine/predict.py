"""Predict masks for image files: palette PNGs of class indices and colour overlays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import Config
from .inference import predict_probabilities

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


def palette_image(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A 'P'-mode PNG image of class indices with the dataset's colours (255 stays 255)."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [channel for colour in palette for channel in colour]
    flat += [0] * (768 - len(flat))
    flat[255 * 3 : 255 * 3 + 3] = [255, 255, 255]
    image.putpalette(flat)
    return image


def overlay(image: Image.Image, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5):
    """Blend the colour-coded prediction over the image."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    coloured = colours[labels]
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
    written = []
    for path in images:
        image, tensor = load_image_tensor(path, cfg.data.mean, cfg.data.std)
        probabilities = predict_probabilities(
            model.predict,
            tensor.to(device),
            meta["num_classes"],
            scales=cfg.eval.scales,
            flip=cfg.eval.flip,
            mode=cfg.eval.mode,
            window=cfg.eval.crop_size or cfg.data.crop_size,
            stride=cfg.eval.stride,
        )
        labels = probabilities.argmax(1)[0].cpu().numpy().astype(np.uint8)
        mask_path = out_dir / f"{path.stem}.png"
        palette_image(labels, meta["palette"]).save(mask_path)
        overlay(image, labels, meta["palette"]).save(out_dir / f"{path.stem}_overlay.jpg", quality=92)
        written.append(mask_path)
    return written
