"""fast3r-jax: Fast3R (multi-view 3D reconstruction in one forward pass) in JAX/Flax.

The public facade:
    config_from_upstream(d)                  upstream config.json dict -> Fast3RConfig
    params_from_torch(state_dict, config)    upstream state dict (numpy) -> parameters (strict)
    predict(config, params, views, ...)      upstream-layout inputs -> upstream-layout outputs (numpy)
    load_pretrained(path, sharding=None)     (config, params) from a converted checkpoint folder
    Reconstructor(checkpoint=None)(inputs, out, ReconstructConfig(...))   images -> files, engine kept compiled
"""

from fast3r_jax.checkpoint import load_pretrained, save_pretrained
from fast3r_jax.config import Fast3RConfig, large, tiny
from fast3r_jax.config import from_upstream as config_from_upstream
from fast3r_jax.convert.table import params_from_torch, params_to_torch
from fast3r_jax.inference.predict import predict
from fast3r_jax.model.fast3r import Fast3R, View
from fast3r_jax.model.params import build_model, init_params
from fast3r_jax.reconstruct import ReconstructConfig, Reconstructor

__all__ = [
    "Fast3R", "Fast3RConfig", "View", "build_model", "config_from_upstream", "init_params", "large",
    "load_pretrained", "params_from_torch", "params_to_torch", "predict", "ReconstructConfig", "Reconstructor",
    "save_pretrained", "tiny",
]
