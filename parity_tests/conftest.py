"""Shared fixtures of the parity tests: the torch device, the packaged MiniLM, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .reference import pick_device, to_numpy  # noqa: F401  (to_numpy is re-exported for tests)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same torch and NumPy global seeds."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded NumPy generator for the test's own random inputs."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the torch reference runs (``NPCOSTEFF_TORCH_DEVICE`` overrides)."""
    return pick_device()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Folder of the packaged MiniLM checkpoint; the test is skipped when it is not installed."""
    from npcosteff.pretrained import default_model_dir

    try:
        return default_model_dir()
    except FileNotFoundError as e:
        pytest.skip(f"packaged MiniLM not available: {e}")


@pytest.fixture(name="to_numpy")
def _to_numpy_fixture():
    """The tensor -> NumPy helper as a fixture."""
    return to_numpy
