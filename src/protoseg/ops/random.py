"""Seeded random streams of the methods' own draws (anchor sampling, memory writes, mixup)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class SeededGenerator:
    """A ``torch.Generator`` seeded with ``seed + rank`` on first use on a device (each DDP rank draws its
    own stream; a method's random choices are reproducible from ``train.seed``).

    :meth:`state` / :meth:`set_state` carry its position through a checkpoint, so a resumed run draws
    what an uninterrupted one would (a state restored before first use is applied at first use)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    def __call__(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed + rank)
            if self._pending_state is not None:
                self._generator.set_state(self._pending_state)
                self._pending_state = None
        return self._generator

    def state(self) -> torch.Tensor | None:
        """The generator's state (a uint8 tensor), or None before its first use."""
        if self._generator is None:
            return self._pending_state
        return self._generator.get_state()

    def set_state(self, state: torch.Tensor | None) -> None:
        """Continue from ``state`` (from :meth:`state`; None: start afresh from the seed)."""
        self._pending_state = None
        if state is None:
            self._generator = None
        elif self._generator is None:
            self._pending_state = state.clone()
        else:
            self._generator.set_state(state)


def generator_states(root: object) -> dict[str, torch.Tensor | None]:
    """The states of every :class:`SeededGenerator` held by ``root`` or its submodules, by attribute path
    (``"criterion.generator"``)."""
    return {path: generator.state() for path, generator in _seeded_generators(root)}


def set_generator_states(root: object, states: dict[str, torch.Tensor | None]) -> None:
    """Restore states from :func:`generator_states` (paths that no longer exist are ignored)."""
    for path, generator in _seeded_generators(root):
        if path in states:
            generator.set_state(states[path])


def _seeded_generators(root: object, prefix: str = "", depth: int = 0):
    if depth > 4:
        return
    for name, value in vars(root).items():
        if name == "_modules":
            for child_name, child in value.items():
                if child is not None:
                    yield from _seeded_generators(child, f"{prefix}{child_name}.", depth + 1)
        elif isinstance(value, SeededGenerator):
            yield f"{prefix}{name}", value
