"""Typed configuration: the recipe's dataclasses (recipe.py), read from YAML and overridden by
`key=value` arguments (loading.py). Lists index with numbers: `stages.1.steps=500`."""

from resforce.config.loading import config_from_yaml, load_config, to_yaml
from resforce.config.recipe import (GRAD_SYNCS, ConfigError, DataConfig, InitConfig, OptimConfig, StageConfig,
                                    TrainConfig)

__all__ = ["ConfigError", "DataConfig", "GRAD_SYNCS", "InitConfig", "OptimConfig", "StageConfig", "TrainConfig",
           "config_from_yaml", "load_config", "to_yaml"]
