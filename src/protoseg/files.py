"""Writing output files safely: atomically, never onto an input, never two outputs to one name."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO


def _describe_write_error(path: Path, error: OSError) -> OSError:
    """``error`` re-raised with the file it was writing and, for a full disk, the space left."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(path.parent).free / 2**20
            reason += f" ({free:.1f} MiB free on its disk)"
        except OSError:
            pass
    message = f"cannot write {path}: {reason}"
    return OSError(error.errno, message) if error.errno else OSError(message)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], mode: int = 0o644) -> Path:
    """Call ``write(file)`` on a hidden temporary file beside ``path``, flush it to disk, then move it
    onto ``path``. A crash, a full disk or an exception in ``write`` leaves ``path`` as it was (absent
    or the previous complete file) and removes the temporary file; an ``OSError`` names ``path``.
    Returns ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _describe_write_error(path, error) from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise _describe_write_error(path, error) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (a newline is added) to a text file in one write; when the write fails (a full
    disk), the file is cut back to its previous length, so it never ends in half a line."""
    path = Path(path)
    data = (line + "\n").encode("utf-8")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as error:
        raise _describe_write_error(path, error) from None
    try:
        size = os.fstat(descriptor).st_size
        try:
            written = os.write(descriptor, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as error:
            os.ftruncate(descriptor, size)
            raise _describe_write_error(path, error) from None
    finally:
        os.close(descriptor)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden ``.NAME.*.tmp`` files :func:`atomic_write` leaves when a process is killed
    mid-write (only call it while no other process writes into ``folder``). Returns what it removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class OutputPlan:
    """The files a command is about to write, checked before anything is written: no output may be one
    of the command's inputs, and no two outputs may share a path (e.g. ``a/img.jpg`` and
    ``b/img.jpg`` both giving ``OUT/img.png``). ``ValueError`` naming both files otherwise."""

    def __init__(self, inputs: Iterable[str | os.PathLike] = (), what: str = "output") -> None:
        self.what = what
        self.inputs = {_key(path): Path(path) for path in inputs}
        self.outputs: dict[str, tuple[Path, str]] = {}

    def add_inputs(self, inputs: Iterable[str | os.PathLike]) -> None:
        for path in inputs:
            self.inputs[_key(path)] = Path(path)

    def claim(self, path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
        """Reserve ``path`` for the output made from ``source``; returns ``path``."""
        path = Path(path)
        key = _key(path)
        if key in self.inputs:
            raise ValueError(
                f"refusing to write {path}: it is an input of this command "
                f"({self.inputs[key]}); choose another output folder"
            )
        if key in self.outputs:
            other_path, other_source = self.outputs[key]
            origin = f" (from {other_source} and {source})" if source is not None else ""
            raise ValueError(
                f"two {self.what}s would be written to {path}{origin}; rename one of the inputs or "
                "handle them in separate runs"
            )
        self.outputs[key] = (path, str(source) if source is not None else str(path))
        return path


def _key(path: str | os.PathLike) -> str:
    """A path's identity for collision checks: absolute, symlinks resolved, case kept."""
    return str(Path(path).resolve(strict=False))


def refuse_input_folder(out_dir: str | os.PathLike, input_folders: Iterable[str | os.PathLike]) -> None:
    """``ValueError`` when ``out_dir`` is one of ``input_folders`` (outputs would mix with the inputs,
    and a later run would read them as inputs)."""
    target = _key(out_dir)
    for folder in input_folders:
        if _key(folder) == target:
            raise ValueError(
                f"output folder {out_dir} holds this command's input images; choose another --out"
            )
