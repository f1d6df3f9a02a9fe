"""Overrides that shrink any recipe to a seconds-long CPU run (2 layers, 2 heads, 8x8)."""

TINY = [
    "model.patch_size=[1,4,4]", "model.num_attention_heads=2", "model.attention_head_dim=12",
    "model.ffn_dim=48", "model.num_layers=2",
    "data.bouncing_balls.resolution=8", "data.bouncing_balls.radius_min=1.5",
    "data.bouncing_balls.radius_max=2.0", "data.bouncing_balls.speed_min=0.5",
    "data.bouncing_balls.speed_max=1.0",
    "optim.batch_size=4", "optim.warmup_steps=2", "log_every=1", "sample.steps=2",
]


def tiny(run_dir, *extra):
    return TINY + [f"run_dir={run_dir}", *extra]
