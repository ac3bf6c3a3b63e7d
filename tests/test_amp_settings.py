"""train.amp / train.amp_dtype: autocast on CUDA only, loss scaling for float16 only."""

import pytest
import torch

from protoseg.config import ConfigError, load_config
from protoseg.engine.amp import amp_settings
from protoseg.engine.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_float16_on_cuda_scales_the_loss_and_bfloat16_does_not():
    half = amp_settings(True, "float16", CUDA)
    assert half.enabled and half.dtype == torch.float16 and half.loss_scaling
    bf16 = amp_settings(True, "bfloat16", CUDA)
    assert bf16.enabled and bf16.dtype == torch.bfloat16 and not bf16.loss_scaling


@pytest.mark.parametrize("amp, device", [(True, CPU), (False, CUDA), (False, CPU)])
def test_amp_is_off_on_cpu_or_when_disabled(amp, device):
    for dtype in ("float16", "bfloat16"):
        settings = amp_settings(amp, dtype, device)
        assert not settings.enabled and not settings.loss_scaling


def test_the_config_key_and_a_bad_value_named_before_any_file_is_touched(tmp_path):
    assert load_config(None, ["train.amp_dtype=bfloat16"]).train.amp_dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"train\.amp_dtype.*'half'.*float16, bfloat16"):
        amp_settings(True, "half", CUDA)
    with pytest.raises(
        ConfigError, match=r"train\.amp_dtype.*float16, bfloat16.*'half'.*train\.amp_dtype=half"
    ):
        load_config(None, ["train.amp_dtype=half", "train.device=cpu", "data.root=/nonexistent"])
    cfg = load_config(None, ["train.device=cpu", "data.root=/nonexistent"])
    cfg.train.amp_dtype = "half"  # set in code, past the config's checks
    with pytest.raises(ValueError, match=r"train\.amp_dtype"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
