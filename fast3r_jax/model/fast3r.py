"""Fast3R: encode every view, fuse all tokens in one transformer, decode per-view pointmaps with two DPT heads.

Views are given in the reference layout (landscape image tensors, `true_shape` per sample). Views that share an
image shape and orientation are encoded and decoded as one batch; the fusion transformer sees all tokens at once.
Outputs keep upstream's names and layout: portrait views come back transposed to landscape. The stages are public
(`Fast3R.encode`, `fuse`, `decode`) so that the engines compose them with their own chunking and device layout.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax.config import Fast3RConfig
from fast3r_jax.model.attention import XLA, AttentionFn
from fast3r_jax.model.dpt_head import DPTHead
from fast3r_jax.model.encoder import ORIENTATIONS, Encoder, is_portrait, token_grid
from fast3r_jax.model.fusion import FusionTransformer

OUTPUT_KEYS = ("pts3d_in_other_view", "conf", "pts3d_local", "conf_local")  # per view, as upstream names them
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # compute dtypes by the names configs and CLIs use


@dataclasses.dataclass(frozen=True)
class View:
    """One view of a batch: img (B, 3, H, W) landscape layout, true_shape (B, 2) (height, width).

    orientation is static: 'landscape' or 'portrait' when every sample of the view has it, else 'mixed' (both paths
    are computed and selected per sample, e.g. for training batches).
    """

    img: jax.Array
    true_shape: jax.Array
    orientation: str = "landscape"


jax.tree_util.register_dataclass(View, data_fields=["img", "true_shape"], meta_fields=["orientation"])


def orientation_of(true_shape) -> str:
    """Static orientation of a view from host-side (B, 2) true shapes (height, width)."""
    portrait = np.asarray(true_shape)[:, 1] < np.asarray(true_shape)[:, 0]
    return "portrait" if portrait.all() else "landscape" if not portrait.any() else "mixed"


def _groups(keys: Sequence) -> dict:
    """Maps each distinct key to the indices that have it, in first-seen order."""
    out: dict = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return out


class Fast3R(nnx.Module):
    """Three public stages, `encode` (images -> tokens), `fuse` (all tokens -> the four hooks) and `decode` (hooks
    -> maps), composed by `__call__`; engines compose the same stages with their own chunking and layout.

    attention (every stage that attends): the kernel, resolved once by whoever builds the computation
    (fast3r_jax.sharding.resolve_attention from `cfg.attention`); the default is the portable XLA kernel.
    """

    def __init__(self, cfg: Fast3RConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        remat = cfg.remat_policy if cfg.remat else None
        self.encoder = Encoder(cfg.encoder, dtype=dtype, remat=remat, scan=cfg.scan_layers, rngs=rngs)
        self.fusion = FusionTransformer(cfg.fusion, cfg.encoder.embed_dim, dtype=dtype, remat=remat,
                                        scan=cfg.scan_layers, rngs=rngs)
        dims = (cfg.encoder.embed_dim,) + (cfg.fusion.embed_dim,) * 3
        self.global_head = DPTHead(cfg.head, dims, cfg.encoder.patch_size, dtype=dtype, rngs=rngs)
        self.local_head = DPTHead(cfg.head, dims, cfg.encoder.patch_size, dtype=dtype, rngs=rngs)

    def __call__(self, views: Sequence[View], image_ids: jax.Array, *, attention: AttentionFn = XLA,
                 train_attention_scale: bool = False) -> list[dict[str, jax.Array]]:
        """views: V views of batch B; image_ids: (B, V). Returns one dict per view with
        pts3d_in_other_view (B, H, W, 3), conf (B, H, W), pts3d_local (B, H, W, 3), conf_local (B, H, W).

        Views of one image shape and orientation are encoded and decoded as one batch."""
        _check_views(views, self.cfg.encoder.patch_size)
        batch = views[0].img.shape[0]
        groups = _groups([(v.img.shape, v.orientation) for v in views])

        tokens: list = [None] * len(views)
        for (_, orientation), idx in groups.items():
            img = jnp.concatenate([views[i].img for i in idx], axis=0)  # (G*B, 3, H, W)
            shape = jnp.concatenate([views[i].true_shape for i in idx], axis=0)  # (G*B, 2)
            enc = self.encode(img, shape, orientation, attention=attention)  # (G*B, n, D_enc)
            for j, i in enumerate(idx):
                tokens[i] = enc[j * batch:(j + 1) * batch]

        lengths = tuple(t.shape[1] for t in tokens)
        hooks = self.fuse(jnp.concatenate(tokens, axis=1), lengths, image_ids, attention=attention,
                          train_attention_scale=train_attention_scale)  # 4 x (B, N, C_k)
        offsets = [sum(lengths[:i]) for i in range(len(views) + 1)]

        outputs: list = [None] * len(views)
        for (img_shape, orientation), idx in groups.items():
            per_view = [[h[:, offsets[i]:offsets[i + 1]] for i in idx] for h in hooks]
            group_hooks = [jnp.concatenate(h, axis=0) for h in per_view]  # 4 x (G*B, n, C_k)
            shape = jnp.concatenate([views[i].true_shape for i in idx], axis=0)
            result = self.decode(group_hooks, img_shape[2:], orientation, shape)
            for j, i in enumerate(idx):
                outputs[i] = {k: v[j * batch:(j + 1) * batch] for k, v in result.items()}
        return outputs

    def encode(self, img: jax.Array, true_shape: jax.Array, orientation: str, *,
               attention: AttentionFn = XLA) -> jax.Array:
        """Encoder tokens of images of one shape: img (B, 3, H, W) in landscape layout (cast to the compute dtype),
        true_shape (B, 2) (height, width), orientation static (ORIENTATIONS). Returns (B, n, D_enc)."""
        return self.encoder(img.astype(self.dtype), true_shape, orientation, attention=attention)[0]

    def fuse(self, tokens: jax.Array, view_lengths: tuple[int, ...], image_ids: jax.Array, *,
             attention: AttentionFn = XLA, train_attention_scale: bool = False) -> list[jax.Array]:
        """The fusion transformer over the tokens of all views: tokens (B, N, D_enc), views concatenated with
        `view_lengths` tokens each; image_ids (B, V). Returns the four hooks the heads read: (B, N, D_enc), then
        three (B, N, D). train_attention_scale: the training-time attention scale instead of upstream's inference
        one."""
        return self.fusion(tokens, view_lengths, image_ids, hooks=self.cfg.hooks,
                           train_attention_scale=train_attention_scale, attention=attention)

    def decode(self, hooks: list[jax.Array], hw: tuple[int, int], orientation: str, true_shape: jax.Array, *,
               landscape: bool = True) -> dict[str, jax.Array]:
        """Both heads on the hooks of views of one shape: hooks 4 x (B, n, C_k), hw the (H, W) of the landscape-layout
        image tensor, true_shape (B, 2). Returns OUTPUT_KEYS -> (B, H, W[, 3]); portrait views transposed to
        landscape layout as upstream returns them, or with landscape=False in their true orientation (not for
        'mixed' views, whose samples would differ in shape)."""
        p = self.cfg.encoder.patch_size
        if not self.cfg.head.landscape_only and orientation != "landscape":
            raise ValueError("portrait views need head.landscape_only=True (upstream's transpose_to_landscape)")
        if not landscape and orientation == "mixed":
            raise ValueError("landscape=False needs views of one orientation, got 'mixed'")

        def run(portrait: bool) -> dict[str, jax.Array]:
            grid = token_grid(hw[0], hw[1], p, portrait)
            pts, conf = self.global_head(hooks, grid)
            pts_local, conf_local = self.local_head(hooks, grid)
            out = dict(pts3d_in_other_view=pts, conf=conf, pts3d_local=pts_local, conf_local=conf_local)
            return {k: jnp.swapaxes(v, 1, 2) for k, v in out.items()} if portrait and landscape else out

        if orientation != "mixed":
            return run(orientation == "portrait")
        portrait_out, landscape_out = run(True), run(False)
        sel = is_portrait(true_shape)
        return {k: jnp.where(sel.reshape((-1,) + (1,) * (v.ndim - 1)), portrait_out[k], v)
                for k, v in landscape_out.items()}


def _check_views(views: Sequence[View], patch_size: int) -> None:
    if not views:
        raise ValueError("at least one view is required")
    batch = views[0].img.shape[0]
    for i, v in enumerate(views):
        if v.img.ndim != 4 or v.img.shape[1] != 3:
            raise ValueError(f"view {i}: img must have shape (B, 3, H, W), got {v.img.shape}")
        if v.img.shape[0] != batch:
            raise ValueError(f"view {i}: batch size {v.img.shape[0]} differs from view 0's {batch}")
        if v.true_shape.shape != (batch, 2):
            raise ValueError(f"view {i}: true_shape must have shape ({batch}, 2), got {v.true_shape.shape}")
        if v.orientation not in ORIENTATIONS:
            raise ValueError(f"view {i}: orientation must be one of {ORIENTATIONS}, got {v.orientation!r}")
