"""Run code "on CUDA" without a GPU: fake tensors that carry shape, dtype and device but no data.

Inside :func:`fake_cuda` a tensor on ``"cuda"`` is a ``FakeTensor``: every op computes its output's
shape, dtype and device only, with the same checks the CUDA kernels make (devices must match, a
CPU tensor that is not a 0-dim scalar cannot meet a CUDA one) and ``torch.autocast("cuda")`` applies
the CUDA autocast policy (half-precision matmuls and convolutions). An op whose output depends on
the data, i.e. one that would synchronise the host with a GPU (``.item()``, ``bool(tensor)``,
``.nonzero()``, boolean-mask indexing, ``.tolist()``), raises ``DataDependentOutputException`` /
``DynamicOutputShapeException``. What fake tensors cannot run: the autograd engine on CUDA (it needs a
device context) and CUDA random generators (they need a driver). Some torch versions (2.4) touch the
driver for a fake CUDA tensor that requires grad and abort the process: :func:`fake_cuda_supported`
tells, from a child process.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
from collections.abc import Iterator
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

CUDA = torch.device("cuda", 0)

_PROBE = f"""
import sys
sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
import torch
from fake_cuda import CUDA, cuda_reported_available, fake_cuda, to_fake_cuda
layer = torch.nn.Linear(4, 3)
with fake_cuda() as mode:
    to_fake_cuda(layer, mode)
    with cuda_reported_available(), torch.autocast("cuda"):
        assert layer(torch.randn(5, 4, device=CUDA)).dtype == torch.float16
"""


@functools.cache
def fake_cuda_supported() -> bool:
    """Whether this torch runs a small fake-CUDA forward under autocast (in a child process: where it
    cannot, the process aborts)."""
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=300)
    return probe.returncode == 0


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """A ``FakeTensorMode`` that refuses real tensors as inputs; convert modules with
    :func:`to_fake_cuda` and batches with :func:`fake_batch` inside it, then run the code under
    :func:`cuda_reported_available`."""
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        yield mode


@contextlib.contextmanager
def cuda_reported_available() -> Iterator[None]:
    """``torch.cuda.is_available()`` true, so that ``torch.autocast("cuda")`` and the code under test
    take their CUDA paths. Enter it after the conversions: with it, ``.to("cuda")`` tries to
    initialise the (absent) driver."""
    with mock.patch.object(torch.cuda, "is_available", lambda: True):
        yield


def to_fake_cuda(module: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Replace every parameter and buffer of ``module`` (a real CPU module) by a fake CUDA copy of the
    same dtype, in place. Returns ``module``."""
    for submodule in module.modules():
        for name, parameter in list(submodule._parameters.items()):
            if parameter is None:
                continue
            with unset_fake_temporarily():
                data = parameter.detach()
            fake = mode.from_tensor(data).to(CUDA)
            submodule._parameters[name] = nn.Parameter(fake, requires_grad=parameter.requires_grad)
        for name, buffer in list(submodule._buffers.items()):
            if buffer is not None:
                submodule._buffers[name] = mode.from_tensor(buffer).to(CUDA)
    return module


def fake_batch(batch: dict[str, torch.Tensor], mode: FakeTensorMode) -> dict[str, torch.Tensor]:
    """A real CPU batch as fake CPU tensors (what a data loader hands the trainer)."""
    return {key: mode.from_tensor(value) for key, value in batch.items()}
