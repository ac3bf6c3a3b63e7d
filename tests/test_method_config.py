"""Every field of every method's config section reaches the built method: changing it changes the
built modules (their structure, parameter shapes or settings) or the training step's outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from protoseg.config import load_config
from protoseg.fields import check_value, field_limits
from protoseg.methods import METHODS, SECTIONS, DatasetInfo, build_method

DATASET = DatasetInfo(num_classes=4, has_background=True)
TINY = [
    "model.backbone.name=tiny",
    "model.backbone.pretrained=false",
    "model.decoder.channels=16",
    "model.protoseg.proj_dim=16",
    "model.contrast.proj_dim=16",
    "model.contrast.max_views=4",
    "model.contrast.start_iter=0",
    "model.contrast.memory_size=8",
    "model.rca.memory_size=12",
    "model.rca.num_prototypes=2",
    "model.rca.contrast_start_iter=0",
    "model.ppc.top_k=4",
    "data.saliency_dir=unused",  # EPS's saliency maps (the batch below carries them)
]

# Values a field cannot take alone (a default of None, values that need another field changed too)
SPECIAL_VALUES = {
    ("protoseg", "proj_dim"): 8,
    ("protoseg", "projection"): ("none", ["model.protoseg.proj_dim=null"]),
    ("ppc", "target_size"): 24,
    ("ppc", "top_k_divisor"): 8,
    ("oaa", "map_size"): 6,
}
# Fields that only act with another one set: (section, field) for every method, or (method, section)
# for every field of a section
REQUIRES = {
    ("contrast", "memory_size"): ["model.contrast.use_memory=true"],
    ("contrast", "pixels_per_image"): ["model.contrast.use_memory=true"],
    ("contrast", "memory_temperature"): ["model.contrast.use_memory=true"],
    ("oaa", "min_probability"): ["model.oaa.filter=probability"],
    # PPC reads the section of the base it is plugged into
    ("ppc", "seam"): ["model.ppc.base=seam"],
    ("ppc", "eps"): ["model.ppc.base=eps"],
    # RCA too (model.rca.base)
    ("rca", "oaa"): ["model.rca.base=oaa"],
    ("rca", "eps"): ["model.rca.base=eps"],
}


def _requirements(method: str, section: str, name: str) -> list[str]:
    return REQUIRES.get((section, name), []) + REQUIRES.get((method, section), [])


def _fingerprint(value, depth: int = 0):
    """Structure, parameter / buffer shapes and every plain setting of a module tree (and of the plain
    helper objects it holds, such as anchor samplers)."""
    if isinstance(value, nn.Module):
        settings = {
            key: _fingerprint(item, depth + 1)
            for key, item in vars(value).items()
            if not key.startswith("_") and key != "training"
        }
        children = {name: _fingerprint(child, depth + 1) for name, child in value.named_children()}
        tensors = {name: tuple(tensor.shape) for name, tensor in value.state_dict().items()}
        return (type(value).__name__, repr(settings), repr(children), repr(tensors))
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(item, (int, float, str, bool)) for item in value):
        return tuple(value)
    if depth < 4 and hasattr(value, "__dict__") and not isinstance(value, (torch.Tensor, type)):
        return (type(value).__name__, repr({k: _fingerprint(v, depth + 1) for k, v in vars(value).items()}))
    return type(value).__name__


def _batch(method) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    mask = torch.randint(0, DATASET.num_classes, (2, 64, 64), generator=generator)
    mask[:, :32] = 1
    mask[:, 32:, :32] = 2
    tags = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    saliency = torch.rand(2, 1, 64, 64, generator=generator)
    index = torch.tensor([0, 1])  # OAA: each image's position and where its crop lies in the original
    frame = torch.tensor([[1.0, 0.0, 1.0, 0.0, 64.0, 64.0], [0.8, 4.0, -0.8, 60.0, 64.0, 64.0]])
    return {"image": images, "mask": mask, "tags": tags, "saliency": saliency, "index": index, "frame": frame}


def _outputs(method) -> dict:
    torch.manual_seed(0)
    method.train()
    batch = _batch(method)
    terms = {}
    for iteration in range(3):  # a few steps, so that memories and prototypes come into play
        terms = method(batch, 10_000 + iteration)
        method.after_step(10_000 + iteration)
        if iteration == 1:
            method.refresh(torch.Generator().manual_seed(0))
    return {key: float(value.detach()) for key, value in terms.items() if value.dim() == 0}


def _build(overrides: list[str]):
    cfg = load_config(None, TINY + overrides)
    torch.manual_seed(0)
    return build_method(cfg.model, DATASET, seed=0)


def _changed_value(section: str, field: dataclasses.Field, default):
    special = SPECIAL_VALUES.get((section, field.name))
    if special is not None:
        return special if isinstance(special, tuple) else (special, [])
    limits = field_limits(field)
    if "choices" in limits:
        other = [choice for choice in limits["choices"] if choice != default]
        return other[0], []
    if isinstance(default, bool):
        return not default, []
    if isinstance(default, int):
        candidates = [default + 1, default * 2, max(0, default - 1)]
    elif isinstance(default, float):
        candidates = [default * 0.5, default * 1.5, default + 0.1, 0.5, 0.0]
    else:
        key = f"model.{section}.{field.name}"
        raise AssertionError(f"no alternative value for {key}; add one to SPECIAL_VALUES")
    for candidate in candidates:
        if candidate != default and check_value(candidate, limits) is None:
            return candidate, []
    raise AssertionError(f"no valid alternative value for model.{section}.{field.name}")


CASES = [
    (name, section, field.name)
    for name, method in METHODS.items()
    for section in method.reads
    for field in dataclasses.fields(SECTIONS[section])
    if field.name not in method.ignores.get(section, ())
]


def test_every_section_is_read_by_a_method():
    read = {section for method in METHODS.values() for section in method.reads}
    assert read == set(SECTIONS)


@pytest.mark.parametrize("method, section, name", CASES, ids=[f"{m}-{s}.{n}" for m, s, n in CASES])
def test_changing_a_field_changes_the_method(method, section, name):
    field = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    base = [f"model.method={method}"] + _requirements(method, section, name)
    reference = _build(base)
    default = getattr(load_config(None, TINY + base).model, section).__dict__[name]
    value, extra = _changed_value(section, field, default)
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    changed = _build(base + extra + [f"model.{section}.{name}={text}"])
    if _fingerprint(changed) != _fingerprint(reference):
        return
    assert _outputs(changed) != _outputs(reference), (
        f"model.{section}.{name}={value} changes neither the built {method} method nor its training outputs"
    )


def test_a_field_the_method_ignores_cannot_be_set():
    from protoseg.config import ConfigError

    ignoring = [(name, method) for name, method in METHODS.items() if method.ignores]
    assert ignoring, "no method ignores a field of a section it reads"
    for name, method in ignoring:
        for section, fields in method.ignores.items():
            for field in fields:
                with pytest.raises(ConfigError, match=f"model.{section}.{field}.*{name}"):
                    load_config(None, [f"model.method={name}", f"model.{section}.{field}=0.3"])
