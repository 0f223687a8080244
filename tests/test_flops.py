"""forward_flops (the analytic count behind the reported TFLOP/s and MFU) against XLA's own cost analysis.

XLA counts the body of a scan once and sees no FLOPs inside fused attention kernels, so the comparison is made on
a stage it counts exactly: the encoder with one block (a one-step scan), plain XLA attention. Its analytic count
is the patch embedding plus one block, the block being the count's increase per block of encoder depth; the margin
allows for the elementwise work (softmax, norms, GELU, RoPE) that the analytic count leaves out.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from fast3r_jax import config as config_lib
from fast3r_jax.model.attention import XLA
from fast3r_jax.model.fast3r import Fast3R
from fast3r_jax.model.flops import forward_flops, train_step_flops

CFG = config_lib.Fast3RConfig(
    encoder=config_lib.EncoderConfig(embed_dim=64, num_heads=2, depth=1),
    fusion=config_lib.FusionConfig(embed_dim=64, num_heads=2, depth=4),
    head=config_lib.HeadConfig(feature_dim=32, last_dim=16, layer_dims=(16, 16, 32, 32)), attention="xla")
SIZE = (64, 96)  # one landscape view: 4 x 6 = 24 tokens
ELEMENTWISE_MAX = 0.05  # XLA / analytic - 1; measured 0.023


def _encoder_depth(depth: int) -> config_lib.Fast3RConfig:
    return CFG.replace(encoder=config_lib.EncoderConfig(embed_dim=64, num_heads=2, depth=depth))


def test_encoder_flops_match_xla_cost_analysis():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Fast3R(CFG, dtype=jnp.float32, rngs=nnx.Rngs(0))))

    def encode(state, img):
        return nnx.merge(graphdef, state).encoder(img, jnp.array([SIZE], jnp.int32), "landscape", attention=XLA)

    img = jax.ShapeDtypeStruct((1, 3, *SIZE), jnp.float32)
    xla = float(jax.jit(encode).lower(state, img).compile().cost_analysis()["flops"])
    tokens, p = SIZE[0] * SIZE[1] // 16**2, 16
    block = forward_flops(_encoder_depth(2), [SIZE]) - forward_flops(CFG, [SIZE])
    ours = 2 * tokens * 3 * p * p * 64 + block  # patch embedding (a 16x16 stride-16 conv) + one block
    print(f"analytic {ours:.4e} XLA {xla:.4e} ratio {xla / ours:.4f}")
    assert 1.0 <= xla / ours <= 1 + ELEMENTWISE_MAX


def test_counts_scale_with_batch_depth_and_training():
    sizes = [(32, 48), (48, 32)]
    assert forward_flops(CFG, sizes, batch=3) == pytest.approx(3 * forward_flops(CFG, sizes))
    assert train_step_flops(CFG, sizes) == pytest.approx(3 * forward_flops(CFG, sizes))
    n, d = sum(h * w // 256 for h, w in sizes), 64  # fusion tokens and width
    block = 2 * n * d * (3 * d + d + 8 * d) + 4 * n * n * d  # qkv, proj, two MLP matmuls; q @ k^T and p @ v
    deeper = CFG.replace(fusion=config_lib.FusionConfig(embed_dim=64, num_heads=2, depth=6))
    assert forward_flops(deeper, sizes) - forward_flops(CFG, sizes) == pytest.approx(2 * block)


def test_head_flops_match_xla_cost_analysis():
    """Both DPT heads on a 16 x 24 token grid (borders, where XLA skips the zero padding's taps, are a small part),
    against the heads' share of forward_flops."""
    size, grid = (256, 384), (16, 24)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Fast3R(CFG, dtype=jnp.float32, rngs=nnx.Rngs(0))))

    def decode(state, hooks):
        return nnx.merge(graphdef, state).decode(hooks, size, "landscape", jnp.array([size], jnp.int32))

    hooks = [jax.ShapeDtypeStruct((1, grid[0] * grid[1], 64), jnp.float32) for _ in range(4)]
    xla = float(jax.jit(decode).lower(state, hooks).compile().cost_analysis()["flops"])
    no_heads = CFG.replace(head=config_lib.HeadConfig(feature_dim=0, last_dim=0, layer_dims=(0, 0, 0, 0)))
    ours = forward_flops(CFG, [size]) - forward_flops(no_heads, [size])
    print(f"analytic {ours:.4e} XLA {xla:.4e} ratio {xla / ours:.4f}")
    assert 1 - ELEMENTWISE_MAX <= xla / ours <= 1 + ELEMENTWISE_MAX
