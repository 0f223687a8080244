"""CroCo ViT encoder: many-aspect-ratio patch embedding, 2D-RoPE blocks, final norm.

Images arrive in the reference layout: (B, 3, H, W) with W >= H. A portrait image is stored transposed, and its
`true_shape` (height, width) has height > width; the patch embedding swaps it back before the convolution, so its
tokens follow the true (portrait) raster order and grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax.config import EncoderConfig
from fast3r_jax.model import layers
from fast3r_jax.model.attention import AttentionFn
from fast3r_jax.model.rope2d import rope_tables
from fast3r_jax.model.transformer import BlockConfig, BlockStack, layer_norm

ORIENTATIONS = ("landscape", "portrait", "mixed")


def token_grid(height: int, width: int, patch_size: int, portrait: bool) -> tuple[int, int]:
    """(rows, cols) of the token grid of a landscape-layout image tensor of size (height, width)."""
    rows, cols = height // patch_size, width // patch_size
    return (cols, rows) if portrait else (rows, cols)


def grid_positions(rows: int, cols: int) -> np.ndarray:
    """(rows*cols, 2) int32 (row, col) of each token in raster order."""
    r, c = np.meshgrid(np.arange(rows, dtype=np.int32), np.arange(cols, dtype=np.int32), indexing="ij")
    return np.stack([r.reshape(-1), c.reshape(-1)], axis=-1)


def is_portrait(true_shape: jax.Array) -> jax.Array:
    """(B,) bool from (B, 2) (height, width)."""
    return true_shape[:, 1] < true_shape[:, 0]


class PatchEmbed(nnx.Module):
    """Conv(patch x patch, stride patch) on the image in its true orientation, flattened in raster order."""

    def __init__(self, patch_size: int, dim: int, *, dtype, rngs: nnx.Rngs):
        self.patch_size = patch_size
        self.proj = layers.Conv(3, dim, (patch_size, patch_size), strides=patch_size, padding="VALID",
                             dtype=dtype, rngs=rngs)

    def _embed(self, img_nhwc: jax.Array) -> jax.Array:
        x = self.proj(img_nhwc)  # (B, h, w, D)
        return x.reshape(x.shape[0], -1, x.shape[-1])  # (B, h*w, D)

    def __call__(self, img: jax.Array, true_shape: jax.Array, orientation: str) -> tuple[jax.Array, jax.Array]:
        """img: (B, 3, H, W) landscape layout; returns tokens (B, n, D) and positions (B, n, 2) int32."""
        batch, channels, height, width = img.shape
        p = self.patch_size
        if channels != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {img.shape}")
        if width < height:
            raise ValueError(f"image tensors must be in landscape layout (W >= H), got H={height} W={width}; "
                             "store a portrait image transposed and keep its true_shape")
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        nhwc = jnp.transpose(img, (0, 2, 3, 1))  # (B, H, W, 3)
        landscape_pos = grid_positions(*token_grid(height, width, p, portrait=False))
        portrait_pos = grid_positions(*token_grid(height, width, p, portrait=True))
        if orientation == "landscape":
            tokens, pos = self._embed(nhwc), landscape_pos
        elif orientation == "portrait":
            tokens, pos = self._embed(jnp.swapaxes(nhwc, 1, 2)), portrait_pos
        else:
            portrait = is_portrait(true_shape)[:, None, None]  # (B, 1, 1)
            tokens = jnp.where(portrait, self._embed(jnp.swapaxes(nhwc, 1, 2)), self._embed(nhwc))
            pos = jnp.where(portrait, portrait_pos, landscape_pos)
        pos = jnp.broadcast_to(jnp.asarray(pos, jnp.int32), (batch,) + landscape_pos.shape)
        return tokens, pos


class Encoder(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, dtype, remat: str | None, scan: bool = True, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim, dtype=dtype, rngs=rngs)
        block = BlockConfig(dim=cfg.embed_dim, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                            norm_eps=cfg.norm_eps, qkv_bias=True)
        self.blocks = BlockStack(block, cfg.depth, dtype=dtype, remat=remat, scan=scan, rngs=rngs)
        self.norm = layer_norm(cfg.embed_dim, cfg.norm_eps, dtype, rngs)

    def __call__(self, img: jax.Array, true_shape: jax.Array, orientation: str, *,
                 attention: AttentionFn) -> tuple[jax.Array, jax.Array]:
        """Returns encoder tokens (B, n, D_enc) and their (row, col) positions (B, n, 2)."""
        x, pos = self.patch_embed(img, true_shape, orientation)
        head_dim = self.cfg.embed_dim // self.cfg.num_heads
        # One grid for the whole batch unless orientations are mixed: tables of batch 1 broadcast over it.
        rope = rope_tables(pos if orientation == "mixed" else pos[:1], head_dim, self.cfg.rope_base)  # (B|1, n, 1, Dh)
        x, _ = self.blocks(x, rope, scale=head_dim ** -0.5, attention=attention)
        return self.norm(x), pos
