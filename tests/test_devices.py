"""--device parsing shared by training and inference."""

import pytest
import torch

from medmamba.devices import resolve_device
from medmamba.errors import ConfigError


def test_cpu_and_default():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("device", ["GPU0", "mps", "tpu:0"])
def test_unknown_device_is_a_config_error(device):
    # torch.device("GPU0") raises RuntimeError; users must get one line, not a traceback.
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_names_the_fix():
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device("cuda")
