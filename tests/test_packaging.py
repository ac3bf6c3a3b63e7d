"""Packaging: one version, the declared extras, and `pip install` of the wheel followed by the API example.

The slow test builds the wheel from a copy of the sources (``pip wheel --no-deps --no-build-isolation``:
setuptools from this environment, nothing downloaded, the checkout left untouched), creates a fresh
virtual environment with ``python -m venv`` and installs the wheel there with ``pip install --no-deps
--no-index``. Installing torch into it would download gigabytes, so the new environment sees this
environment's third-party packages (torch, timm, ...) through a ``.pth`` file that appends their
site-packages folder to ``sys.path`` *after* its own: ``protoseg`` itself is imported from the wheel
(checked), the rest is shared. ``python -m venv --system-site-packages`` is not enough here because
this interpreter is itself a virtual environment: that flag shares the base interpreter's packages,
not these. Then docs/api.md's quickstart (the README's Python API example) runs in that environment on
a tiny trained run, from a fresh working folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import protoseg
from doc_examples import python_blocks

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_version_source():
    project = _pyproject()["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "protoseg.__version__"}
    assert importlib.metadata.version("protoseg") == protoseg.__version__


def test_optional_extras_are_declared():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"onnx", "smp"} <= set(extras)
    assert any(requirement.startswith("onnxruntime") for requirement in extras["onnx"])
    assert any(requirement.startswith("segmentation-models-pytorch") for requirement in extras["smp"])
    assert "protoseg[onnx,smp]" in extras["dev"]  # `make test` runs the export and integration tests


def _examples() -> list[str]:
    """docs/api.md's quickstart, and the README's Python API blocks that use the public API."""
    examples = python_blocks("docs/api.md", "## Quickstart")
    examples += [block for block in python_blocks("README.md", "## Python API") if "protoseg.load(" in block]
    assert examples
    return examples


def _train_demo_run(work: Path) -> None:
    """``runs/demo`` and ``data/shapes`` under ``work``, as ``make demo`` leaves them (tiny and fast)."""
    from protoseg.config import load_config
    from protoseg.data.shapes import generate_shapes
    from protoseg.engine.trainer import Trainer

    generate_shapes(work / "data/shapes", size=64, num_train=8, num_val=2, seed=1)
    overrides = [
        f"data.root={work / 'data/shapes'}",
        "data.crop_size=[48, 48]",
        "data.num_workers=0",
        "model.backbone.name=tiny",
        "model.backbone.pretrained=false",
        "model.decoder.channels=16",
        "train.iterations=2",
        "train.batch_size=2",
        "train.val_interval=2",
        "train.device=cpu",
    ]
    trainer = Trainer(
        load_config(ROOT / "configs/shapes/linear.yaml", overrides), work / "runs/demo", progress=False
    )
    try:
        trainer.train()
    finally:
        trainer.close()


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_runs_the_api_example(tmp_path):
    project, dist, env, work = (tmp_path / name for name in ("project", "dist", "env", "work"))
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    quiet = {"check": True, "capture_output": True, "text": True}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(project)], **quiet
    )
    (wheel,) = dist.glob("protoseg-*.whl")
    assert wheel.name.startswith(f"protoseg-{protoseg.__version__}-")

    subprocess.run([sys.executable, "-m", "venv", str(env)], **quiet)
    python = env / "bin" / "python"
    own_site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], **quiet
    ).stdout.strip()
    Path(own_site, "shared_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], **quiet)

    work.mkdir()
    _train_demo_run(work)
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")
    } | {"HF_HUB_OFFLINE": "1"}
    check = (
        "import sys, importlib.metadata, protoseg\n"
        "assert protoseg.__file__.startswith(sys.prefix), protoseg.__file__\n"
        "assert importlib.metadata.version('protoseg') == protoseg.__version__\n"
        "print('installed', protoseg.__version__)\n"
    )
    for example in _examples():
        result = subprocess.run(
            [str(python), "-c", check + example], cwd=work, env=environment, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"installed {protoseg.__version__}" in result.stdout
    assert (work / "runs/demo/api_predictions/val_00000.png").is_file()
    command = subprocess.run([str(env / "bin" / "protoseg"), "--help"], env=environment, **quiet)
    assert "export" in command.stdout
