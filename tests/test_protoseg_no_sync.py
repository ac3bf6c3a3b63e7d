"""The ProtoSeg training step has no host synchronisation and a cost in ops independent of C."""

from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from protoseg.losses import ProtoSegLoss
from protoseg.models.heads import ProtoSegHead
from protoseg.prototypes import PrototypeBank

HOST_SYNC_OPS = {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::tolist"}


def recorded_ops(step) -> Counter:
    step()  # warm-up: lazy initialisations are not part of the step
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return Counter(event.name for event in prof.events() if event.name.startswith("aten::"))


def head_training_step(num_classes: int, init: str = "random"):
    torch.manual_seed(0)
    head = ProtoSegHead(8, num_classes, num_prototypes=4, proj_dim=8, init=init)
    criterion = ProtoSegLoss()
    features = torch.randn(2, 8, 6, 6)
    target = torch.randint(0, num_classes, (2, 12, 12))
    target[:, :2] = 255

    def step():
        outputs = head(features, target)
        criterion(outputs, target)["loss"]

    return step


def bank_standalone_step(num_classes: int):
    torch.manual_seed(0)
    bank = PrototypeBank(num_classes, 4, 8)
    embeddings = torch.nn.functional.normalize(torch.randn(300, 8), dim=1)
    labels = torch.randint(0, num_classes, (300,))
    labels[:20] = 255
    correct = torch.rand(300) < 0.5

    def step():
        assignment = bank.cluster(embeddings, labels)
        bank.update(embeddings, labels, assignment.update, correct)

    return step


@pytest.mark.parametrize("init", ["random", "data"])
def test_head_training_step_has_no_host_sync_and_the_same_ops_for_19_and_150_classes(init):
    small, large = recorded_ops(head_training_step(19, init)), recorded_ops(head_training_step(150, init))
    assert not HOST_SYNC_OPS & set(small), HOST_SYNC_OPS & set(small)
    assert "aten::index_add_" in small and "aten::scatter_reduce_" in small  # the step was recorded
    assert small == large


def test_standalone_bank_step_has_no_host_sync_and_the_same_ops_for_19_and_150_classes():
    small, large = recorded_ops(bank_standalone_step(19)), recorded_ops(bank_standalone_step(150))
    assert not HOST_SYNC_OPS & set(small), HOST_SYNC_OPS & set(small)
    assert "aten::bmm" in small
    assert small == large


def test_eval_forward_is_one_matmul_and_a_max():
    torch.manual_seed(0)
    head = ProtoSegHead(8, 19, num_prototypes=4, proj_dim=8).eval()
    features = torch.randn(2, 8, 6, 6)
    with torch.no_grad():  # as in evaluation and prediction
        ops = recorded_ops(lambda: head(features, torch.zeros(2, 6, 6, dtype=torch.long)))
    assert not HOST_SYNC_OPS & set(ops)
    for training_only in ("aten::sort", "aten::index_add_", "aten::scatter_reduce_", "aten::logsumexp"):
        assert training_only not in ops
    assert ops["aten::amax"] == 1
