"""Fusion transformer: global self-attention over the tokens of all views at once (upstream's "decoder")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fast3r_jax.config import INFERENCE_SCALE_FACTOR, FusionConfig
from fast3r_jax.model import layers
from fast3r_jax.model.attention import AttentionFn
from fast3r_jax.model.image_index_embedding import image_index_embedding
from fast3r_jax.model.transformer import BlockConfig, BlockStack, layer_norm


class FusionTransformer(nnx.Module):
    def __init__(self, cfg: FusionConfig, enc_dim: int, *, dtype, remat: str | None, scan: bool = True,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = layers.Linear(enc_dim, cfg.embed_dim, kernel_init=nnx.initializers.xavier_uniform(),
                                dtype=dtype, rngs=rngs)
        block = BlockConfig(dim=cfg.embed_dim, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                            norm_eps=cfg.block_norm_eps, qkv_bias=cfg.qkv_bias)
        self.blocks = BlockStack(block, cfg.depth, dtype=dtype, remat=remat, scan=scan, rngs=rngs)
        self.norm = layer_norm(cfg.embed_dim, cfg.final_norm_eps, dtype, rngs)

    def attention_scale(self, train_attention_scale: bool) -> float:
        scale = (self.cfg.embed_dim // self.cfg.num_heads) ** -0.5
        if self.cfg.inference_attention_scale and not train_attention_scale:
            scale *= INFERENCE_SCALE_FACTOR
        return scale

    def __call__(self, tokens: jax.Array, view_lengths: tuple[int, ...], image_ids: jax.Array, *,
                 hooks: tuple[int, int, int, int], train_attention_scale: bool,
                 attention: AttentionFn) -> list[jax.Array]:
        """Fuses the concatenated encoder tokens of all views.

        tokens: (B, N, D_enc), views concatenated in order with `view_lengths` tokens each.
        image_ids: (B, V) int (table rows) or float (interpolated positions).
        Returns the four hook outputs: [tokens (B, N, D_enc), block outputs (B, N, D)..., normed final (B, N, D)].
        """
        if sum(view_lengths) != tokens.shape[1]:
            raise ValueError(f"view lengths {view_lengths} do not add up to {tokens.shape[1]} tokens")
        if image_ids.shape != (tokens.shape[0], len(view_lengths)):
            raise ValueError(f"image_ids must have shape (B, V)={(tokens.shape[0], len(view_lengths))}, "
                             f"got {image_ids.shape}")
        x = self.embed(tokens)  # (B, N, D)
        emb = image_index_embedding(image_ids, self.cfg.embed_dim, self.cfg.num_image_ids).astype(x.dtype)  # (B, V, D)
        batch, dim = emb.shape[0], emb.shape[-1]
        if len(set(view_lengths)) == 1:  # one broadcast; no gather for XLA to constant-fold
            emb = jnp.broadcast_to(emb[:, :, None], (batch, len(view_lengths), view_lengths[0], dim))
            emb = emb.reshape(batch, -1, dim)  # (B, N, D)
        else:
            emb = jnp.concatenate([jnp.broadcast_to(emb[:, i:i + 1], (batch, n, dim))
                                   for i, n in enumerate(view_lengths)], axis=1)  # (B, N, D)
        x = x + emb
        x, kept = self.blocks(x, None, scale=self.attention_scale(train_attention_scale), attention=attention,
                              keep=hooks[1:3])
        return [tokens, *kept, self.norm(x)]
