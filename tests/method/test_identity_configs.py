"""configs/bb_rf_*.yaml: the shared warm-up, then 800 steps of one history variant each,
all trained by scripts/identity_experiments.sh."""

from pathlib import Path

from resforce.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("bb_rf_*.yaml"))


def branch_of(path, ref, steps: int):
    """The branch stage of a config that shares `ref`'s network, optimizer, data and its
    1500-step teacher-forcing warm-up, after checking all of that; the branch trains `steps`."""
    cfg = load_config(path)
    warm, branch = cfg.stages
    assert (warm.steps, warm.clip_chunks, warm.history.strategy) == (1500, 8, "teacher"), path.name
    assert (branch.steps, branch.clip_chunks) == (steps, 8), path.name
    assert cfg.model == ref.model and cfg.optim == ref.optim and cfg.data == ref.data, path.name
    return branch


def test_variant_configs_branch_from_the_shared_warmup():
    assert len(CONFIGS) >= 7
    script = (ROOT / "scripts" / "identity_experiments.sh").read_text()
    ref = load_config(ROOT / "configs" / "bb_resampling.yaml")
    for path in CONFIGS:
        h = branch_of(path, ref, 800).history
        changed = (h.resample_per_chunk or h.keep_ground_truth_p > 0 or h.preserve_colour != "none"
                   or h.calibrate_every > 0 or h.history_from_previous_step
                   or (h.strategy == "parallel_resampling" and h.resample_shift != 0.6) or h.anchor_chunks > 0)
        assert changed, f"{path.name} trains no variant"
        assert path.stem.removeprefix("bb_") + ":0" in script, f"{path.name} is not in the script's JOBS"


def test_agent_configs_branch_from_the_shared_agent_warmup():
    """configs/agent_*.yaml: the same 1500-step teacher-forcing warm-up and network, then 600
    steps of one method each, so every branch starts from runs/agent_warmup (--init-from)."""
    paths = sorted(p for p in (ROOT / "configs").glob("agent_*.yaml") if p.stem != "agent_base")
    assert len(paths) >= 9
    ref = load_config(ROOT / "configs" / "agent_resampling.yaml")
    for path in paths:
        branch_of(path, ref, 600)
