"""Check a dataset split's files before the first iteration, so that a missing, unreadable or
mismatched file stops a run at its start instead of hours into it.

The check is fast: each image and mask must exist and have a readable header (format, size, mode), a
mask must be single-channel and the size of its image, and every image needs its tags when the dataset
reads a tag file. The pixel data is not decoded (a file truncated after its header is only found when
it is read). Samples that passed are remembered per file (path, size, modification time) in a cache
file (``$PROTOSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/protoseg``, else ``~/.cache/protoseg``), so a
second run over the same files checks only what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..files import atomic_write_text

MAX_REPORTED = 3
PLAIN_REPORT_SECONDS = 2.0


def cache_dir() -> Path:
    """Where protoseg keeps caches (``PROTOSEG_CACHE_DIR``, ``XDG_CACHE_HOME/protoseg``, ``~/.cache``)."""
    if os.environ.get("PROTOSEG_CACHE_DIR"):
        return Path(os.environ["PROTOSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "protoseg"


def _signature(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _header(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as handle:
            return handle
    except Exception as error:  # noqa: BLE001 - PIL raises many types for foreign or broken files
        raise ValueError(f"cannot read {what} {path}: {error}") from None


def check_sample(dataset, index: int) -> None:
    """Check sample ``index`` of ``dataset`` (a :class:`~protoseg.data.base.SegmentationDataset`);
    ``FileNotFoundError`` / ``ValueError`` naming the file otherwise."""
    image_path, mask_path = dataset.image_path(index), dataset.mask_path(index)
    image = _header(image_path, "image")
    mask = _header(mask_path, "mask")
    if len(mask.getbands()) != 1:
        raise ValueError(f"mask {mask_path} must be single-channel (P, L or I mode), got mode {mask.mode}")
    if image.size != mask.size:
        raise ValueError(
            f"size mismatch: image {image_path} is {image.height}x{image.width}, "
            f"mask {mask_path} is {mask.height}x{mask.width}"
        )
    if getattr(dataset, "tag_table", None) is not None:
        dataset.image_tags(index)


def _cache_file(dataset) -> Path:
    identity = (
        "\n".join(f"{dataset.image_path(i)}|{dataset.mask_path(i)}" for i in range(len(dataset)))
        + f"\ntags:{getattr(dataset, 'tag_source', None)}"
    )
    return cache_dir() / "checked" / (hashlib.sha1(identity.encode()).hexdigest() + ".json")


def _read_cache(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def check_split_files(dataset, description: str, progress: bool = True, use_cache: bool = True) -> int:
    """Check every sample of ``dataset`` (see the module docstring); ``description`` names the split in
    the error (``"training split 'train' of data/shapes"``). Returns the number of samples checked
    (not found in the cache). One ``FileNotFoundError`` / ``ValueError`` names the first bad files and
    how many samples have one."""
    cache_path = _cache_file(dataset) if use_cache else None
    known = _read_cache(cache_path) if cache_path is not None else set()
    passed: set[str] = set()
    problems: list[Exception] = []
    checked = 0
    show = progress and sys.stderr.isatty()
    start = time.perf_counter()
    for index in tqdm(range(len(dataset)), desc=f"checking {description}", disable=not show, leave=False):
        signatures = [_signature(dataset.image_path(index)), _signature(dataset.mask_path(index))]
        key = "|".join(str(signature) for signature in signatures)
        if None not in signatures and key in known:
            passed.add(key)
            continue
        checked += 1
        try:
            check_sample(dataset, index)
        except (OSError, ValueError) as error:
            problems.append(error)
            continue
        if None not in signatures:
            passed.add(key)
    elapsed = time.perf_counter() - start
    if progress and not show and elapsed > PLAIN_REPORT_SECONDS:  # a log file learns where the time went
        print(f"checked the files of {checked} samples of the {description} in {elapsed:.1f} s", flush=True)
    if cache_path is not None and passed != known:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
            atomic_write_text(cache_path, json.dumps(sorted(passed)))
    if problems:
        first = "; ".join(str(problem) for problem in problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        error_type = FileNotFoundError if isinstance(problems[0], FileNotFoundError) else ValueError
        raise error_type(
            f"{description}: {len(problems)} of {len(dataset)} samples have bad files: {first}{more}"
        )
    return checked
