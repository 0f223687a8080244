"""fast3r-jax: Fast3R (multi-view 3D reconstruction in one forward pass) in JAX/Flax.

The public facade:
    config_from_upstream(d)                  upstream config.json dict -> Fast3RConfig
    params_from_torch(state_dict, config)    upstream state dict (numpy) -> parameters (strict)
    predict(config, params, views, ...)      upstream-layout inputs -> upstream-layout outputs (numpy)
    load_pretrained(path, sharding=None)     (config, params) from a converted checkpoint folder
    Reconstructor(checkpoint=None)(inputs, out, ReconstructConfig(...))   images -> files, engine kept compiled

Each name is imported from its module on first use, so that importing the package (every command does) costs
nothing a command does not use.
"""

import importlib
from typing import Any

_EXPORTS = {  # public name: (module, name there)
    "Fast3R": ("fast3r_jax.model.fast3r", "Fast3R"),
    "Fast3RConfig": ("fast3r_jax.config", "Fast3RConfig"),
    "ReconstructConfig": ("fast3r_jax.reconstruct", "ReconstructConfig"),
    "Reconstructor": ("fast3r_jax.reconstruct", "Reconstructor"),
    "View": ("fast3r_jax.model.fast3r", "View"),
    "build_model": ("fast3r_jax.model.params", "build_model"),
    "config_from_upstream": ("fast3r_jax.config", "from_upstream"),
    "init_params": ("fast3r_jax.model.params", "init_params"),
    "large": ("fast3r_jax.config", "large"),
    "load_pretrained": ("fast3r_jax.checkpoint", "load_pretrained"),
    "params_from_torch": ("fast3r_jax.convert.table", "params_from_torch"),
    "params_to_torch": ("fast3r_jax.convert.table", "params_to_torch"),
    "predict": ("fast3r_jax.inference.predict", "predict"),
    "save_pretrained": ("fast3r_jax.checkpoint", "save_pretrained"),
    "tiny": ("fast3r_jax.config", "tiny"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fast3r_jax' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
