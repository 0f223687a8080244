"""Analytic FLOP count of a Fast3R forward (2 per multiply-add; matmuls, attention and convolutions).

XLA's cost analysis counts a scanned layer once and does not see inside fused attention kernels, so throughput
and MFU are computed from this count instead.
"""

from __future__ import annotations

from typing import Sequence

from fast3r_jax.config import Fast3RConfig

# Dense bf16 peak of the accelerators MFU is reported for (datasheet, FLOP/s), by device-kind substring.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _block(tokens: int, dim: int, mlp_ratio: float, sequences: int = 1) -> float:
    """One pre-norm block over `sequences` sequences of `tokens` tokens."""
    hidden = int(dim * mlp_ratio)
    dense = 2 * tokens * dim * (3 * dim + dim + 2 * hidden)
    attention = 4 * tokens * tokens * dim
    return sequences * (dense + attention)


def _dpt_head(cfg: Fast3RConfig, rows: int, cols: int) -> float:
    h = cfg.head
    dims = (cfg.encoder.embed_dim,) + (cfg.fusion.embed_dim,) * 3
    f = h.feature_dim
    n = rows * cols
    total = 0.0
    scales = (4, 2, 1, 0.5)
    for i, (cin, cout, s) in enumerate(zip(dims, h.layer_dims, scales)):
        total += 2 * n * cin * cout  # 1x1 projection
        if i in (0, 1):
            total += 2 * n * cout * cout * s * s  # transposed conv, kernel = stride
        if i == 3:
            total += 2 * n * s * s * cout * cout * 9  # 3x3 stride-2 conv
        total += 2 * n * s * s * cout * f * 9  # 3x3 projection to the feature width
    for i, s in enumerate(scales):
        pixels = n * s * s
        units = 2 if i < 3 else 1  # the coarsest fusion block has no skip input
        total += units * 2 * (2 * pixels * f * f * 9)  # residual conv units
        total += 2 * (4 * pixels) * f * f  # 1x1 out conv after 2x upsampling
    half, full = n * 8 * 8, n * 16 * 16  # pixels at H/2 x W/2 (out_conv1) and at H x W (out_conv2, out_conv3)
    total += 2 * half * f * (f // 2) * 9
    total += 2 * full * (f // 2) * h.last_dim * 9 + 2 * full * h.last_dim * 4
    return total


def forward_flops(cfg: Fast3RConfig, image_sizes: Sequence[tuple[int, int]], batch: int = 1) -> float:
    """FLOPs of one forward over views of the given (H, W) sizes, for `batch` samples."""
    p = cfg.encoder.patch_size
    e, f = cfg.encoder, cfg.fusion
    lengths = [(hh // p) * (ww // p) for hh, ww in image_sizes]
    total_tokens = sum(lengths)
    enc = sum(2 * n * 3 * p * p * e.embed_dim + e.depth * _block(n, e.embed_dim, e.mlp_ratio) for n in lengths)
    fusion = 2 * total_tokens * e.embed_dim * f.embed_dim + f.depth * _block(total_tokens, f.embed_dim, f.mlp_ratio)
    heads = sum(2 * _dpt_head(cfg, hh // p, ww // p) for hh, ww in image_sizes)
    return batch * (enc + fusion + heads)


def train_step_flops(cfg: Fast3RConfig, image_sizes: Sequence[tuple[int, int]], batch: int = 1) -> float:
    """Model FLOPs of one training step: forward + backward (2x forward). Recomputation under remat is not counted,
    so MFU compares settings by useful work."""
    return 3 * forward_flops(cfg, image_sizes, batch)


def peak_flops(device_kind: str) -> float | None:
    """Datasheet dense bf16 FLOP/s of a device, or None when unknown (then no MFU is reported)."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_kind), None)
