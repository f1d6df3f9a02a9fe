"""Configuration: presets from YAML, and every field documented."""

import ast
import dataclasses
import inspect
import textwrap

import pytest

from resforce.config import ConfigError, DataConfig, TrainConfig, load_config
from resforce.worlds import WORLDS
from resforce.model.dit import PRESETS


def test_model_preset_from_yaml_with_explicit_fields_winning(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  preset: tiny\n  num_layers: 3\n")
    cfg = load_config(recipe, ["model.ffn_dim=40"])
    tiny = PRESETS["tiny"]
    assert cfg.model.num_attention_heads == tiny["num_attention_heads"] == 4
    assert cfg.model.patch_size == tiny["patch_size"]
    assert (cfg.model.num_layers, cfg.model.ffn_dim) == (3, 40)  # the YAML and the override win
    wan = load_config(None, ["model.preset=wan2.1-1.3b", "data.bouncing_balls.resolution=32",
                             "model.in_channels=3", "model.out_channels=3"]).model
    assert (wan.num_layers, wan.text_dim, wan.frames_per_chunk) == (30, 4096, 3)
    with pytest.raises(ConfigError, match=r"model.preset='huge': expected one of"):
        load_config(recipe, ["model.preset=huge"])


def test_a_load_leaves_the_defaults_of_the_next_load_alone(tmp_path):
    """The defaults node is built once per process and copied per load: what a recipe, a
    preset or an override sets must not reach the next load."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 7\nmodel:\n  num_layers: 5\n")
    default = load_config(None)
    load_config(recipe, ["optim.lr=0.5", "stages.0.steps=3"])
    load_config(None, ["model.preset=tiny", "optim.batch_size=3"])
    assert load_config(None) == default
    assert (default.seed, default.optim.lr) != (7, 0.5)


def _config_classes(cls, seen=None):
    seen = seen if seen is not None else []
    if cls not in seen:
        seen.append(cls)
        for f in dataclasses.fields(cls):
            for sub in (f.type, *getattr(f.type, "__args__", ())):
                if isinstance(sub, str):
                    continue
                if dataclasses.is_dataclass(sub):
                    _config_classes(sub, seen)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            items = default if isinstance(default, list) else [default]
            for item in items:
                if dataclasses.is_dataclass(item):
                    _config_classes(type(item), seen)
    return seen


def test_every_config_field_has_a_docstring():
    classes = _config_classes(TrainConfig)
    assert len(classes) >= 10  # TrainConfig, model, data (+2 worlds), optim, stage, history, attention, ...
    missing = []
    for cls in classes:
        if cls is DataConfig:  # made from the world registry: each section's doc is its world's config_doc
            missing += [f"DataConfig.{k}" for k, w in WORLDS.items() if not w.config_doc]
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                    missing.append(f"{cls.__name__}.{node.target.id}")
    assert not missing, f"config fields without a docstring: {missing}"
