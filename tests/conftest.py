import pytest
import torch

from diffusion_lib.schedules import NoiseSchedule


@pytest.fixture(params=["linear", "cosine"])
def schedule(request):
    return NoiseSchedule.make(request.param, 1000)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
