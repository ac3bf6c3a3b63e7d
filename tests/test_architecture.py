"""The shape of the package: imports point down the layers of docs/architecture.md, the methods' math
imports torch only, and nothing outside a method's module decides by its name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "protoseg"

LAYERS: list[set[str]] = [
    {"__main__"},
    {"launcher"},
    {"cli", "__init__"},
    {"api"},
    {"export"},
    {"benchmark", "viz", "integrations"},
    {"engine", "wsss"},
    {"config"},
    {"methods"},
    {"models", "data"},
    {"losses"},
    {"prototypes"},
    {"ops"},
    {"fields", "files"},
]
"""Top to bottom: a module may import its own package and any package of a lower layer."""

TORCH_ONLY = {"ops", "prototypes", "losses"}
"""The methods' math: torch and the standard library, nothing else (no timm, numpy, data, config)."""


def layer_of(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"protoseg.{unit} is in no layer of tests/test_architecture.py: place it")


def unit_of(path: Path) -> str:
    """``protoseg/engine/trainer.py`` -> ``engine``; ``protoseg/config.py`` -> ``config``."""
    relative = path.relative_to(SOURCE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["protoseg", *path.relative_to(SOURCE).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x
                    found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
                    continue
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


SOURCES = sorted(SOURCE.rglob("*.py"))


def test_every_module_is_placed_in_a_layer():
    for path in SOURCES:
        layer_of(unit_of(path))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(SOURCE)) for p in SOURCES])
def test_imports_point_down(path):
    unit = unit_of(path)
    for line, module in imported_modules(path):
        parts = module.split(".")
        if parts[0] != "protoseg" or len(parts) == 1:
            continue
        target = parts[1]
        if target == unit:
            continue
        assert layer_of(target) > layer_of(unit), (
            f"{path.relative_to(SOURCE)}:{line} imports protoseg.{target} (layer {layer_of(target)}) "
            f"from {unit} (layer {layer_of(unit)}): imports must point down"
        )


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCES if unit_of(p) in TORCH_ONLY],
    ids=[str(p.relative_to(SOURCE)) for p in SOURCES if unit_of(p) in TORCH_ONLY],
)
def test_the_methods_math_imports_torch_only(path):
    allowed_third_party = {"torch"}
    for line, module in imported_modules(path):
        top = module.split(".")[0]
        if top in ("protoseg", "__future__") or top in _standard_library():
            continue
        assert top in allowed_third_party, f"{path.relative_to(SOURCE)}:{line} imports {module}"


def _standard_library() -> set[str]:
    import sys

    return set(sys.stdlib_module_names)


METHOD_NAME_TEST = re.compile(r"""(model\.method|method_name)\s*(==|!=|in\s)""")


def test_nothing_outside_the_methods_branches_on_a_method_name():
    offenders = []
    for path in SOURCES:
        if unit_of(path) == "methods":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if METHOD_NAME_TEST.search(line):
                offenders.append(f"{path.relative_to(SOURCE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
