import numpy as np
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def rng():
    """A fresh, seeded generator per test (no global state)."""
    return np.random.default_rng(20261122)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
