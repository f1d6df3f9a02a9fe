"""Small pieces shared by the data sources."""

from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf


def coerce_config(config: Any, cls: type):
    """A `cls` dataclass from an instance, a plain dict or an OmegaConf section, validated
    (fields may have been mutated since construction)."""
    if isinstance(config, Mapping):
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        config = cls(**config)
    config.validate()
    return config
