"""Loading a recipe: YAML files (with `base:` chains), `key=value` overrides, presets and a Wan
folder's fixed fields layered onto the dataclasses of recipe.py; back to YAML for run
directories and weights' metadata. OmegaConf validates against the dataclasses: an unknown key
or a value of the wrong type is an error naming the key."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resforce.model.dit import PRESETS


from resforce.config.recipe import ConfigError, TrainConfig


@functools.cache
def _built_schema() -> DictConfig:
    """OmegaConf's typed node of TrainConfig's defaults, built once per process: building it
    walks every dataclass and is half of a load's time; a deep copy is a tenth of that."""
    return OmegaConf.structured(TrainConfig)


def _schema() -> DictConfig:
    """A fresh copy of the defaults node (overrides update it in place)."""
    return copy.deepcopy(_built_schema())


def _yaml_chain(path: Path, depth: int = 0) -> list:
    """The YAML layers of a recipe: a top-level `base: other.yaml` (relative to the file) is
    loaded first, recursively, so recipes share a base without repeating it."""
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory: expected a YAML recipe file (e.g. configs/bb_teacher.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if depth > 8:
        raise ConfigError(f"{path}: `base:` chain is too deep (a cycle?)")
    try:
        layer = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml syntax errors, tags: the first line, never the file's content
        raise ConfigError(f"{path}: not valid YAML ({_first_line(e)}); expected a YAML mapping of config keys") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{path}: expected a YAML mapping of config keys (e.g. `seed: 0`), got a "
                          f"{type(layer).__name__}")
    import dataclasses

    top = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = [k for k in layer.keys() if not isinstance(k, str) or (k not in top and k != "base")]
    if bad:  # named, clipped: never a whole line of a file that is not a recipe
        shown = repr(bad[0]) if isinstance(bad[0], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", bad[0]) \
            else "(not shown: not a config key)"
        raise ConfigError(f"{path}: unknown top-level key {shown}; is it a resforce recipe? expected keys of the config "
                          f"({', '.join(sorted(top))}) or `base:`")
    base = layer.pop("base", None)
    chain = _yaml_chain(path.parent / base, depth + 1) if base else []
    return chain + [layer]


def _parse_override(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
    key, value = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:  # invalid YAML, or a tag (!!python/...) that safe_load refuses
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_first_line(e)}); expected "
                          f"key=value with a plain YAML value, e.g. seed=1 or stages.0.steps=100") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return _clip(text.splitlines()[0]) if text else type(e).__name__


def _clip(v, n: int = 80) -> str:
    r = v if isinstance(v, str) else repr(v)
    return r if len(r) <= n else r[:n - 3] + "..."


def _as_config(node) -> TrainConfig:
    try:
        cfg = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0] + f" (key: {getattr(e, 'full_key', '?')})") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    cfg.validate()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> TrainConfig:
    """TrainConfig from an optional YAML file plus `key=value` overrides. A `model.preset`
    (from either) supplies the model defaults under them."""
    layers = _yaml_chain(Path(path)) if path is not None else []
    node = _layered(_schema(), path, layers, overrides)
    preset, wan = node.model.preset, node.init.wan
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"model.preset={preset!r}: expected one of {sorted(PRESETS)}")
    if preset is None and wan is None:
        return _as_config(node)
    base = _schema()
    if preset is not None:
        base = OmegaConf.merge(base, {"model": _preset_fields(preset)})
    wan_fields = _wan_fields(wan) if wan is not None else None
    if wan_fields is not None:
        base = OmegaConf.merge(base, {"model": wan_fields})
    node = _layered(base, path, layers, overrides)
    if wan_fields is not None:
        _check_fits_wan(node, wan, wan_fields, preset)
    return _as_config(node)


WAN_FIXED_FIELDS = ("in_channels", "out_channels", "patch_size", "num_attention_heads", "attention_head_dim",
                    "ffn_dim", "num_layers", "freq_dim", "text_dim", "cross_attn_norm", "eps", "rope_theta",
                    "prediction")
"""model.* fields a Wan folder's weights fix: its shapes, and the norms, RoPE and output the
weights were trained with."""


def _wan_fields(wan: str) -> dict:
    """The model fields of a Wan folder's config.json (ConfigError naming init.wan if unreadable)."""
    import dataclasses

    from resforce.wan.folder import read_wan_config
    from resforce.wan.transformer import WanConversionError, config_from_diffusers
    try:
        folder, cfg_dict = read_wan_config(wan)
        fields = dataclasses.asdict(config_from_diffusers(cfg_dict))
    except (OSError, WanConversionError) as e:
        raise ConfigError(f"init.wan={wan!r}: {e}") from None
    keep = (*WAN_FIXED_FIELDS, "frames_per_chunk", "init")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if k in keep}


def _check_fits_wan(node, wan: str, wan_fields: dict, preset: str | None) -> None:
    """ConfigError listing every model.* field that a preset, the YAML or an override sets
    to another value than the Wan folder's weights have."""
    norm = lambda v: v if isinstance(v, (str, bool, int, float)) else list(v)  # noqa: E731  (tuples, TupleConfig)
    conflicts = []
    for key in WAN_FIXED_FIELDS:
        want = norm(wan_fields[key])
        if preset is not None and key in PRESETS[preset] and norm(PRESETS[preset][key]) != want:
            conflicts.append(f"model.{key}={norm(PRESETS[preset][key])} (from model.preset={preset})")
        elif norm(node.model[key]) != want:
            conflicts.append(f"model.{key}={norm(node.model[key])}")
    if conflicts:
        fixed = ", ".join(f"{k}={norm(wan_fields[k])}" for k in WAN_FIXED_FIELDS)
        raise ConfigError(f"init.wan={wan!r} fixes the model's shape, but the config sets "
                          + "; ".join(conflicts) + f". The Wan weights have {fixed}: drop those keys "
                          "(the Wan folder supplies them) or start from another folder")


def _preset_fields(preset: str) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS[preset].items()}


def _layered(node, path, layers: list, overrides) -> object:
    """`node` with the YAML layers and then the overrides merged on top."""
    for layer in layers:
        try:
            node = OmegaConf.merge(node, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path}: {str(e).splitlines()[0]} (key: {getattr(e, 'full_key', '?')})") from None
    for item in overrides:
        key, value = _parse_override(item)
        m = re.match(r"^stages\.(\d+)(\.|$)", key)
        if m and int(m.group(1)) >= len(node.stages):
            raise ConfigError(f"override {item!r}: stages.{m.group(1)} does not exist; this recipe has "
                              f"{len(node.stages)} stage(s) (stages.0 to stages.{len(node.stages) - 1})")
        try:
            OmegaConf.update(node, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {str(e).splitlines()[0]}") from None
    return node


def config_from_yaml(text: str) -> TrainConfig:
    """TrainConfig from a YAML string (e.g. the metadata of a weights file)."""
    return _as_config(OmegaConf.merge(_schema(), OmegaConf.create(text)))


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
