"""AdamW with linear warm-up and cosine decay, as upstream trains Fast3R (lr 1e-4, betas (0.9, 0.95), wd 0.05).

Upstream hands every parameter to AdamW with the same weight decay; `decay_mask='matrices'` instead exempts biases
and norm scales (the usual ViT no-decay groups).
"""

from __future__ import annotations

import jax
import optax

from fast3r_jax.config import OptimizerConfig


def learning_rate(cfg: OptimizerConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, cfg.total_steps, end_value=cfg.min_lr)


def _matrices(params):
    """True for weights that get decay: kernels (not biases, not LayerNorm scales)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                        mask=_matrices if cfg.decay_mask == "matrices" else None)
    if cfg.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
