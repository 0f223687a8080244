"""Upstream-style config.json dicts (encoder_args / decoder_args / head_args) for the reference configs."""

import math


def upstream_config(enc_dim=96, enc_heads=3, enc_depth=2, dec_dim=64, dec_heads=4, dec_depth=10) -> dict:
    return {
        "encoder_args": {"encoder_type": "croco", "img_size": 512, "patch_size": 16,
                         "patch_embed_cls": "ManyAR_PatchEmbed", "embed_dim": enc_dim, "num_heads": enc_heads,
                         "depth": enc_depth, "mlp_ratio": 4, "pos_embed": "RoPE100",
                         "attn_implementation": "pytorch_naive"},
        "decoder_args": {"decoder_type": "fast3r", "random_image_idx_embedding": True, "enc_embed_dim": enc_dim,
                         "embed_dim": dec_dim, "num_heads": dec_heads, "depth": dec_depth, "mlp_ratio": 4.0,
                         "qkv_bias": True, "drop": 0.0, "attn_drop": 0.0, "attn_implementation": "pytorch_naive"},
        "head_args": {"head_type": "dpt", "output_mode": "pts3d", "landscape_only": True,
                      "depth_mode": ["exp", -math.inf, math.inf], "conf_mode": ["exp", 1, math.inf],
                      "patch_size": 16, "with_local_head": True},
    }


TINY = upstream_config()
LARGE = upstream_config(1024, 16, 24, 1024, 16, 24)
