"""OAA's accumulated attention maps: one small file per training image, written atomically.

``<folder>/<index:07d>.pt`` (``torch.save`` of a dict of tensors) holds image ``index``'s accumulated maps
of the classes that have one: ``classes`` int64 ``(K,)`` ascending, ``counts`` int32 ``(K,)`` (steps fused
into each), ``maps`` uint8 ``(K, Gh, Gw)`` (8-bit levels over a grid of the original image) and
``iteration`` int64 (the last training iteration whose update the file holds). ``meta.json`` names the
images (``names[index]``) and the number of classes.

An update of iteration ``t`` is applied only when ``t`` is later than the file's ``iteration``: a resumed
run, which repeats the iterations after its checkpoint, neither fuses an update twice nor misses one that
the interrupted run did not write. Each file is replaced atomically (``protoseg.files.atomic_write``), so
an image's maps, counts and iteration always agree. Without a folder the store lives in memory (tests,
benchmarks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write, atomic_write_text
from ..ops.oaa import fuse

META_FILE = "meta.json"


@dataclass
class AccumulatedMaps:
    """One image's accumulated maps: ``classes`` ``(K,)``, ``counts`` ``(K,)``, ``maps`` ``(K, Gh, Gw)``
    uint8, and the last ``iteration`` applied."""

    classes: torch.Tensor
    counts: torch.Tensor
    maps: torch.Tensor
    iteration: int

    def dense(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, Gh, Gw)`` uint8 maps and ``(C,)`` int32 counts over all classes (0 for those without)."""
        maps = torch.zeros(num_classes, *self.maps.shape[1:], dtype=torch.uint8)
        counts = torch.zeros(num_classes, dtype=torch.int32)
        maps[self.classes] = self.maps
        counts[self.classes] = self.counts
        return maps, counts


def map_path(folder: str | Path, index: int) -> Path:
    """The file of image ``index`` in a store folder."""
    return Path(folder) / f"{index:07d}.pt"


def read_maps(path: str | Path) -> AccumulatedMaps:
    """Read one image's file; ``ValueError`` naming it when it is not one."""
    try:
        data = torch.load(path, weights_only=True)
        record = AccumulatedMaps(
            data["classes"].long(), data["counts"].int(), data["maps"], int(data["iteration"])
        )
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - torch.load raises many types for a damaged file
        raise ValueError(f"{path} is not an OAA map file: {error}") from error
    if record.maps.dtype != torch.uint8 or record.maps.dim() != 3 or len(record.maps) != len(record.classes):
        raise ValueError(
            f"{path}: maps {tuple(record.maps.shape)} do not fit classes {tuple(record.classes.shape)}"
        )
    return record


def read_meta(folder: str | Path) -> dict:
    """``meta.json`` of a store folder: ``{"num_classes": C, "names": [...]}``."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no OAA maps in {folder} (missing {META_FILE})")
    return json.loads(path.read_text())


class AttentionStore:
    """The accumulated maps of every training image (see the module docstring).

    Args:
        num_classes: C, the foreground classes.
        folder: where the files live; None keeps them in memory.
    """

    def __init__(self, num_classes: int, folder: str | Path | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"AttentionStore: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.folder = Path(folder) if folder is not None else None
        self._cache: dict[int, AccumulatedMaps | None] = {}

    def write_meta(self, names: Sequence[str]) -> None:
        """Record the image names (index -> name) and C in ``meta.json`` (a folder of another dataset is
        refused: its files would be other images' maps)."""
        if self.folder is None:
            return
        meta = {"num_classes": self.num_classes, "names": list(names)}
        path = self.folder / META_FILE
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored != meta:
                raise ValueError(
                    f"{path} records {len(stored.get('names', []))} images of {stored.get('num_classes')} "
                    f"classes, this run has {len(meta['names'])} of {self.num_classes}: the OAA maps there "
                    "belong to another dataset"
                )
            return
        atomic_write_text(path, json.dumps(meta))

    def read(self, index: int) -> AccumulatedMaps | None:
        """Image ``index``'s maps, or None when it has none yet."""
        if index not in self._cache:
            path = map_path(self.folder, index) if self.folder is not None else None
            self._cache[index] = read_maps(path) if path is not None and path.is_file() else None
        return self._cache[index]

    def apply(
        self,
        index: int,
        iteration: int,
        update: torch.Tensor,
        tagged: torch.Tensor,
        passed: torch.Tensor,
        final: bool,
    ) -> bool:
        """Fuse one step's ``update`` ``(C, Gh, Gw)`` uint8 of image ``index`` (:func:`protoseg.ops.oaa.fuse`
        with ``tagged`` / ``passed`` ``(C,)`` bool) unless the image holds iteration ``iteration`` already.
        Returns whether it was applied (and its file rewritten)."""
        if update.dtype != torch.uint8 or update.dim() != 3 or update.shape[0] != self.num_classes:
            raise ValueError(
                f"AttentionStore.apply: update must be uint8 ({self.num_classes}, Gh, Gw), "
                f"got {update.dtype} {tuple(update.shape)}"
            )
        record = self.read(index)
        if record is not None and iteration <= record.iteration:
            return False
        if record is not None and tuple(record.maps.shape[1:]) != tuple(update.shape[1:]):
            where = map_path(self.folder, index) if self.folder is not None else f"image {index}"
            raise ValueError(
                f"{where}: OAA maps of {tuple(record.maps.shape[1:])} cannot take an update of "
                f"{tuple(update.shape[1:])} (model.oaa.map_size changed?)"
            )
        if record is None:
            accumulated = torch.zeros_like(update)
            counts = torch.zeros(self.num_classes, dtype=torch.int32)
        else:
            accumulated, counts = record.dense(self.num_classes)
        accumulated, counts = fuse(accumulated, counts, update, tagged.bool(), passed.bool(), final)
        classes = torch.nonzero(counts > 0).flatten()
        record = AccumulatedMaps(classes, counts[classes], accumulated[classes].clone(), int(iteration))
        if self.folder is not None:
            data = {
                "classes": record.classes,
                "counts": record.counts,
                "maps": record.maps,
                "iteration": torch.tensor(record.iteration),
            }
            atomic_write(map_path(self.folder, index), lambda file: torch.save(data, file))
        self._cache[index] = record
        return True
