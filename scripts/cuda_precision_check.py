"""The CUDA checks of bf16 precision, host syncs and the KV cache, as one short device check.

On the CPU these are proved by tests/method/test_precision.py, test_host_syncs.py and
test_kv_cache.py; what only a GPU can show is run here (about a minute on one GPU):
1. a rollout (guidance, prefix, re-noised history, 4 chunks x 4 Euler steps) under bf16
   autocast with torch.cuda.set_sync_debug_mode("error"): any host sync raises;
2. the KV cache holds bf16 keys under autocast, at exact capacity;
3. bf16 vs fp32 rollout of the same model: relative difference (printed);
4. a tiny bf16 training step (self-resampling) through the Trainer: TF32 flags set, the host
   syncs of one step counted by the sync debug mode (printed: the loss/grad-norm read and the
   data's host-to-device copies are expected);
5. rollout time fp32 vs bf16 (printed; tiny model: launch-bound, not a speed claim).

    python scripts/cuda_precision_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from resforce.config import load_config  # noqa: E402
from resforce.model import build_model  # noqa: E402
from resforce.rollout import SampleConfig, rollout  # noqa: E402
from resforce.training.loop import Trainer  # noqa: E402
from tiny import tiny  # noqa: E402

H = W = 32


def _rollout(model, prec, cfg, **kw):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = rollout(model, 2, H, W, cfg, precision=prec, **kw)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(preset="test", frames_per_chunk=2, patch_size=(1, 4, 4), text_dim=8, init="wan").to(dev).eval()
    ctx, null = torch.randn(2, 5, 8, device=dev), torch.zeros(1, 5, 8, device=dev)
    cfg = SampleConfig(chunks=4, steps=4, cfg_scale=3.0, history_noise=0.05, seed=0)
    kw = dict(prefix=torch.randn(2, 3, 2, H, W, device=dev), text=ctx, uncond_text=null)
    made, new_cache = [], model.new_cache
    model.new_cache = lambda *a, **k: made.append(new_cache(*a, **k)) or made[-1]
    _rollout(model, "bf16", cfg, **kw)  # warm-up (cuBLAS handles, allocator)
    torch.cuda.set_sync_debug_mode("error")
    try:
        bf16, t_bf16 = _rollout(model, "bf16", cfg, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print("1. bf16 rollout under sync debug mode 'error': no host sync")
    k = made[-1][0].k
    assert k.dtype == torch.bfloat16 and k.shape[:3] == (4, 2, 5), (k.dtype, k.shape)
    print(f"2. KV cache: {k.dtype}, {k.shape[2]} slots for 1 prefix + 4 chunks, batch 2B = {k.shape[0]}")
    fp32, t_fp32 = _rollout(model, "fp32", cfg, **kw)
    rel = ((bf16 - fp32).abs().max() / fp32.abs().max()).item()
    print(f"3. bf16 vs fp32 rollout: max rel diff {rel:.4f}")
    with tempfile.TemporaryDirectory() as d:
        c = load_config("configs/bb_resampling.yaml", tiny(d, "stages.0.steps=0", "stages.1.steps=3",
                                                           "precision=bf16", "device=cuda", "optim.grad_accum=2"))
        trainer = Trainer(c, resume=False, progress=False)
        try:
            trainer.train_step()
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m = trainer.train_step()
            torch.cuda.set_sync_debug_mode("default")
        finally:
            trainer.close()
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    print(f"4. bf16 training step (2 micro-batches, self-resampling): loss {m['loss']:.4f}, "
          f"TF32 on, {len(syncs)} host syncs: {syncs}")
    print(f"5. rollout time: fp32 {t_fp32:.3f} s, bf16 {t_bf16:.3f} s ({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
