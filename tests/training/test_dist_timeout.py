"""The process group's collective timeout is the config's dist_timeout_minutes (long by
default: ranks wait at a barrier while rank 0 writes a gathered checkpoint), and is checked."""

import datetime
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import one_rank_group  # noqa: E402,F401  (fixture)
from tiny import tiny  # noqa: E402

# process groups and torchrun launches run on one test worker (make test runs two: pytest-xdist)
pytestmark = pytest.mark.xdist_group("processes")


def test_init_process_group_gets_the_configured_timeout(one_rank_group, monkeypatch):  # noqa: F811
    import torch.distributed as dist

    from resforce.training import distributed as parallel

    seen = {}
    init = dist.init_process_group

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return init(*args, **kwargs)

    monkeypatch.setattr(dist, "init_process_group", spy)
    parallel.setup("ddp", torch.device("cpu"), 90)
    assert seen["timeout"] == datetime.timedelta(minutes=90)


def test_the_timeout_field(tmp_path):
    from resforce.config import ConfigError, load_config

    assert load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r")).dist_timeout_minutes == 60
    with pytest.raises(ConfigError, match="dist_timeout_minutes"):
        load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r", "dist_timeout_minutes=0"))
