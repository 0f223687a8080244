"""Loading an experiment config file (`configs/<name>.py` with `get_config()`) or a preset by name."""

from __future__ import annotations

import importlib.util
import pathlib

from fast3r_jax import config as config_lib


def load(spec: str) -> config_lib.Fast3RConfig:
    """`spec` is a preset name ('large', 'tiny') or a path to a Python file defining get_config()."""
    if spec in ("large", "tiny"):
        return getattr(config_lib, spec)()
    path = pathlib.Path(spec)
    if not path.is_file():
        raise ValueError(f"config {spec!r} is neither a preset (large, tiny) nor a file")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, config_lib.Fast3RConfig):
        raise ValueError(f"{path}: get_config() returned {type(cfg).__name__}, expected Fast3RConfig")
    return cfg
