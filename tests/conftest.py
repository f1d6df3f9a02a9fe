"""Shared fixtures. Tests mirror src/resforce/ folder by folder; helpers live in tests/support/."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "support"))  # `from tiny import tiny` etc.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def _randomize(model, seed=0):
    """Tiny random model with *non-zero* AdaLN and output (the zero init would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and "scale_shift_table" not in name:  # fan-in scaled, outputs O(1)
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.fixture
def randomize():
    return _randomize


def pytest_collection_modifyitems(config, items):
    """Tests marked xdist_group first (a stable sort: the order within each part stays): under
    make test's `--dist loadgroup` the group is one unit of work for one worker, and handed out
    first it runs beside the small tests instead of after them, alone."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)
