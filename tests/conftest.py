import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the dataset file check's cache (protoseg.engine.data_check) in a fresh folder, not the user's
os.environ.setdefault("PROTOSEG_CACHE_DIR", tempfile.mkdtemp(prefix="protoseg-test-cache-"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
