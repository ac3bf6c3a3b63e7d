"""Image-level class tags (multi-hot vectors) for weakly supervised training.

Formats:
- ``cls_labels.npy``: the WSSS codebases' format, ``np.save`` of a dict
  ``{image_id: float32 multi-hot over the foreground classes}``;
- CSV: one ``image,class1;class2`` line per image (an optional ``image,...`` header line);
- JSON: ``{"image_id": ["class1", "class2"], ...}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..files import atomic_write


def load_cls_labels(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``cls_labels.npy`` dict: image id -> float32 multi-hot array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tag file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=True)
        table = loaded.item() if loaded.dtype == object and loaded.shape == () else None
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"cannot read tag file {path}: {error}") from error
    if not isinstance(table, dict):
        raise ValueError(f"tag file {path} must hold a dict {{image_id: multi-hot array}}")
    return {str(name): np.asarray(tags, dtype=np.float32).reshape(-1) for name, tags in table.items()}


def save_cls_labels(path: str | Path, labels: Mapping[str, np.ndarray]) -> None:
    """Write ``labels`` as a ``cls_labels.npy`` dict (exactly at ``path``, atomically; no suffix is added)."""
    table = {str(name): np.asarray(tags, dtype=np.float32) for name, tags in labels.items()}
    atomic_write(path, lambda handle: np.save(handle, table, allow_pickle=True))


def tags_from_mask(mask: np.ndarray, num_classes: int, has_background: bool) -> np.ndarray:
    """Multi-hot tags of the classes present in ``mask`` (H, W); 255 (ignore) is excluded.

    Returns float32 ``(num_classes - 1,)`` without the background class when ``has_background``,
    else ``(num_classes,)``.
    """
    values = np.asarray(mask).reshape(-1).astype(np.int64)
    values = values[values != 255]
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)][0]
        raise ValueError(f"mask value {bad} out of range for {num_classes} classes")
    present = np.bincount(values, minlength=num_classes)[:num_classes] > 0
    if has_background:
        present = present[1:]
    return present.astype(np.float32)


def load_tag_file(path: str | Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read CSV / JSON / ``.npy`` tags into ``{image_id: float32 multi-hot over class_names}``.

    ``class_names`` are the classes the tag vector runs over (for a dataset with a background
    class: the foreground classes only). Unknown class names raise ``ValueError`` naming the
    class, the image and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tag file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        table = load_cls_labels(path)
        for name, tags in table.items():
            if tags.shape != (len(class_names),):
                raise ValueError(
                    f"tag file {path}: image '{name}' has {tags.shape[0]} tags, expected {len(class_names)}"
                )
        return table
    if suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot parse tag file {path}: {error}") from error
        if not isinstance(raw, dict):
            raise ValueError(f"tag file {path} must hold a JSON object {{image: [class, ...]}}")
        entries = []
        for name, names in raw.items():
            if isinstance(names, str) or not isinstance(names, list):
                raise ValueError(f"tag file {path}: image '{name}' must map to a list of class names")
            entries.append((str(name), [str(item) for item in names]))
    elif suffix in (".csv", ".txt"):
        entries = _read_csv_entries(path)
    else:
        raise ValueError(f"tag file {path}: unsupported format '{suffix}' (use .csv, .json or .npy)")
    index_of = {name: index for index, name in enumerate(class_names)}
    table: dict[str, np.ndarray] = {}
    for image, names in entries:
        tags = np.zeros(len(class_names), dtype=np.float32)
        for class_name in names:
            if class_name not in index_of:
                raise ValueError(
                    f"tag file {path}: unknown class '{class_name}' for image '{image}' "
                    f"(known: {', '.join(class_names)})"
                )
            tags[index_of[class_name]] = 1.0
        table[image] = tags
    return table


def _read_csv_entries(path: Path) -> list[tuple[str, list[str]]]:
    entries = []
    with open(path, newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if line_number == 1 and row[0].strip().lower() == "image":
                continue
            if len(row) > 2:
                raise ValueError(
                    f"tag file {path}, line {line_number}: expected 'image,class1;class2', got {row}"
                )
            field = row[1] if len(row) == 2 else ""
            entries.append((row[0].strip(), [item.strip() for item in field.split(";") if item.strip()]))
    return entries
