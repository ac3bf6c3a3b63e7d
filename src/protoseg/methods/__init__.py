"""The methods, one module each, found through one explicit name -> class map.

``model.method`` names a class of :data:`METHODS`; :func:`build_method` builds it from a config. A new
method is one module here (a :class:`Method` subclass, with its config section if it has options) and
one line in :data:`METHODS`; nothing outside its module branches on its name (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from .base import (
    SEGMENTATION,
    WEAKLY_SUPERVISED,
    DatasetInfo,
    Method,
    RunInfo,
    SegmentationMethod,
    ValidationSettings,
    WeaklySupervisedMethod,
)
from .cam import CAMConfig, CAMMethod
from .contrast import ContrastConfig, ContrastMethod
from .eps import EPSConfig, EPSMethod
from .linear import LinearConfig, LinearMethod
from .oaa import OAAConfig, OAAMethod
from .ppc import BASES, PPCConfig, PPCMethod
from .protoseg import ProtoSegConfig, ProtoSegMethod
from .protoseg_contrast import ProtoSegContrastMethod
from .rca import RCAConfig, RCAMethod
from .seam import SEAMConfig, SEAMMethod
from .wsss_base import BaseRecipe, BaseView, WSSSBase

METHODS: dict[str, type[Method]] = {
    method.name: method
    for method in (
        LinearMethod,
        ProtoSegMethod,
        ContrastMethod,
        ProtoSegContrastMethod,
        CAMMethod,
        SEAMMethod,
        EPSMethod,
        OAAMethod,
        PPCMethod,
        RCAMethod,
    )
}
"""Every method by its ``model.method`` name."""

SECTIONS: dict[str, type] = {
    method.section[0]: method.section[1] for method in METHODS.values() if method.section
}
"""The config sections of the methods (``model.<name>``) by name."""

BASELINES: dict[str, str] = {SEGMENTATION: "linear", WEAKLY_SUPERVISED: "cam"}
"""The method every method of a family is compared with (benchmarks, docs)."""


def register(method: type[Method]) -> type[Method]:
    """Add a method defined outside protoseg (an experiment, a parity harness) to :data:`METHODS` under
    its ``name``; it may read the existing config sections, not add one. Returns the class."""
    if not (isinstance(method, type) and issubclass(method, Method) and method.name):
        raise ValueError(f"register: {method!r} is not a Method subclass with a name")
    if method.name in METHODS:
        raise ValueError(
            f"register: a method named '{method.name}' exists already ({METHODS[method.name].__name__})"
        )
    unknown = sorted(set(method.reads) - set(SECTIONS))
    if method.section is not None or unknown:
        raise ValueError(
            f"register: '{method.name}' may only read existing config sections ({', '.join(SECTIONS)})"
        )
    METHODS[method.name] = method
    return method


def method_class(name: str) -> type[Method]:
    """The class of ``model.method`` = ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown model.method '{name}' (valid: {', '.join(METHODS)})")
    return METHODS[name]


def build_method(model: Any, dataset: DatasetInfo, seed: int = 0) -> Method:
    """The method named by ``model.method``, built from the ``model`` config section for ``dataset``."""
    return method_class(model.method).from_config(model, dataset, seed)


__all__ = [
    "BASELINES",
    "BASES",
    "METHODS",
    "SECTIONS",
    "BaseRecipe",
    "BaseView",
    "CAMConfig",
    "CAMMethod",
    "ContrastConfig",
    "ContrastMethod",
    "DatasetInfo",
    "EPSConfig",
    "EPSMethod",
    "LinearConfig",
    "LinearMethod",
    "Method",
    "OAAConfig",
    "OAAMethod",
    "PPCConfig",
    "PPCMethod",
    "ProtoSegConfig",
    "ProtoSegContrastMethod",
    "ProtoSegMethod",
    "RCAConfig",
    "RCAMethod",
    "RunInfo",
    "SEAMConfig",
    "SEAMMethod",
    "SegmentationMethod",
    "ValidationSettings",
    "WSSSBase",
    "WeaklySupervisedMethod",
    "build_method",
    "method_class",
    "register",
]
