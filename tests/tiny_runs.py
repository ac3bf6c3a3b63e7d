"""Helpers for tests that run the command line on tiny data: a shapes dataset of 64 x 64 images, tiny
training overrides (built-in CNN, 48 x 48 crops, a few iterations), a full disk for the writers, and the
scripts of benchmarks/ loaded as modules."""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
from pathlib import Path

from protoseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "shapes" / "linear.yaml")


def tiny_overrides(root, **extra) -> list[str]:
    """``--set`` values for a run of a few seconds on a CPU."""
    values = {
        "data.root": str(root),
        "data.crop_size": "[48, 48]",
        "data.num_workers": 0,
        "data.mean": "[0.5, 0.5, 0.5]",
        "data.std": "[0.5, 0.5, 0.5]",
        "model.backbone.name": "tiny",
        "model.backbone.pretrained": "false",
        "model.decoder.channels": 16,
        "train.iterations": 6,
        "train.batch_size": 4,
        "train.lr": 0.05,
        "train.log_interval": 2,
        "train.val_interval": 3,
        "train.checkpoint_interval": 3,
        "train.device": "cpu",
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_args(overrides: list[str]) -> list[str]:
    return sum([["--set", item] for item in overrides], [])


def train_args(root, run_dir, *flags: str, **extra) -> list[str]:
    """The arguments of ``protoseg train`` for a tiny run of ``root`` into ``run_dir``."""
    return [
        "train",
        CONFIG,
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *flags,
        *set_args(tiny_overrides(root, **extra)),
    ]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``protoseg ARGV`` in this process."""
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m protoseg`` child: this checkout's sources, one thread."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT / "tests"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


PYTHON = sys.executable


class FullDisk:
    """A disk that fills up: once ``budget`` bytes have been written in total, every write fails with
    ENOSPC after writing what still fits. Patched: the writers of :mod:`protoseg.files` (atomic writes,
    log appends) and the direct writers a command might use instead (``PIL.Image.Image.save``,
    ``matplotlib`` ``Figure.savefig`` and ``Path.write_text`` / ``write_bytes`` to a path)."""

    def __init__(self, monkeypatch, budget: int = 0) -> None:
        import protoseg.files as files

        self.budget = budget
        self.written = 0
        disk = self

        def allowance(size: int) -> int:
            part = max(0, min(size, disk.budget - disk.written))
            disk.written += part
            return part

        class File:
            def __init__(self, handle):
                self.handle = handle

            def write(self, data):
                data = bytes(data)
                part = allowance(len(data))
                self.handle.write(data[:part])
                if part < len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return len(data)

            def __getattr__(self, name):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                self.handle.close()

        class FullOs:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def fdopen(descriptor, mode="r"):
                return File(os.fdopen(descriptor, mode))

            @staticmethod
            def write(descriptor, data):
                part = allowance(len(data))
                written = os.write(descriptor, bytes(data)[:part]) if part else 0
                if part < len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return written

        monkeypatch.setattr(files, "os", FullOs())

        def write_path(path, data: bytes) -> None:
            part = allowance(len(data))
            with open(path, "wb") as handle:
                handle.write(data[:part])
            if part < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        import io

        from matplotlib.figure import Figure
        from PIL import Image

        def direct(real):
            def save(self, target, *args, **kwargs):
                if not isinstance(target, (str, os.PathLike)):
                    return real(self, target, *args, **kwargs)
                buffer = io.BytesIO()
                if real is real_image_save and "format" not in kwargs:
                    kwargs["format"] = Image.registered_extensions().get(Path(target).suffix.lower())
                real(self, buffer, *args, **kwargs)
                write_path(target, buffer.getvalue())

            return save

        real_image_save, real_savefig = Image.Image.save, Figure.savefig
        monkeypatch.setattr(Image.Image, "save", direct(real_image_save))
        monkeypatch.setattr(Figure, "savefig", direct(real_savefig))
        monkeypatch.setattr(Path, "write_bytes", lambda self, data: write_path(self, bytes(data)))
        monkeypatch.setattr(
            Path, "write_text", lambda self, text, *args, **kwargs: write_path(self, text.encode("utf-8"))
        )
