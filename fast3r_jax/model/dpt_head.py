"""DPT head: reassembles four token maps into an image-resolution pointmap and confidence (NHWC throughout).

Stages (paper terms): reassemble (1x1 projection, then resample to 4x, 2x, 1x, 1/2x of the token grid), project to
a common width, fuse coarse to fine (residual conv units, bilinear 2x upsampling), and an output convolution stack
that predicts (x, y, z, confidence) per pixel, followed by the depth / confidence activations.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax.config import HeadConfig
from fast3r_jax.geometry import transforms as geometry
from fast3r_jax.model import layers


def _conv(cin: int, cout: int, k: int, *, stride: int = 1, bias: bool = True, dtype, rngs) -> layers.Conv:
    pad = (k - 1) // 2
    return layers.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=bias,
                    dtype=dtype, rngs=rngs)


def _align_corners_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resampling with align_corners=True: output i = (1 - w[i]) * input[lo[i]] + w[i] * input[hi[i]]."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out) * scale
    lo = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of the same resampling."""
    lo, hi, w = _align_corners_taps(n_in, n_out)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1 - w)
    np.add.at(m, (np.arange(n_out), hi), w)
    return m


@jax.custom_vjp
def upsample2x(x: jax.Array) -> jax.Array:
    """Bilinear 2x upsampling with align_corners=True (PyTorch's interpolate), in float32. x: (B, H, W, C).

    Forward: two-tap gathers with constant indices along H, then W, which XLA fuses into one memory-bound pass
    (interpolation matrices would cost two GEMMs and a transpose of the largest output). Backward: the transposed
    interpolation matrices, since the gathers' own gradient is a scatter-add, several times slower.
    """
    y = x.astype(jnp.float32)
    for axis in (1, 2):
        n = y.shape[axis]
        lo, hi, w = _align_corners_taps(n, 2 * n)
        w = jnp.asarray(w.reshape([-1 if a == axis else 1 for a in range(4)]))
        y = jnp.take(y, lo, axis=axis, mode="clip") * (1 - w) + jnp.take(y, hi, axis=axis, mode="clip") * w
    return y.astype(x.dtype)  # (B, 2H, 2W, C)


def _upsample2x_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return upsample2x(x), None


def _upsample2x_bwd(_, g: jax.Array) -> tuple[jax.Array]:
    h, w = g.shape[1] // 2, g.shape[2] // 2
    mh = jnp.asarray(_align_corners_matrix(h, 2 * h), g.dtype)
    mw = jnp.asarray(_align_corners_matrix(w, 2 * w), g.dtype)
    return (jnp.einsum("ih,bijc,jw->bhwc", mh, g, mw),)  # (B, H, W, C)


upsample2x.defvjp(_upsample2x_fwd, _upsample2x_bwd)


class PixelShuffleUpsample(nnx.Module):
    """Transposed convolution with kernel == stride (no overlap): each token becomes an s x s block of pixels."""

    def __init__(self, channels: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.stride = stride
        self.dtype = dtype
        bound = 1.0 / math.sqrt(channels * stride * stride)
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (channels, stride, stride, channels),
                                                   jnp.float32, -bound, bound))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        s = self.stride
        kernel = self.kernel[...].astype(self.dtype or x.dtype)
        y = jnp.einsum("bhwc,cijo->bhiwjo", x, kernel)  # (B, H, s, W, s, C_out)
        return layers.add_bias(y.reshape(b, h * s, w * s, -1), self.bias[...])


class Reassemble(nnx.Module):
    """1x1 projection of a token map, then resampling: 4x / 2x up (stage 0, 1), identity (2), 2x down (3)."""

    def __init__(self, stage: int, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        self.stage = stage
        self.proj = _conv(cin, cout, 1, dtype=dtype, rngs=rngs)
        if stage in (0, 1):
            self.resample = PixelShuffleUpsample(cout, 4 if stage == 0 else 2, dtype=dtype, rngs=rngs)
        elif stage == 3:
            self.resample = _conv(cout, cout, 3, stride=2, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.proj(x)
        return x if self.stage == 2 else self.resample(x)


class ResidualConvUnit(nnx.Module):
    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = _conv(dim, dim, 3, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(dim, dim, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x)))) + x


class FusionBlock(nnx.Module):
    """out_conv(upsample2x(rcu2(x + rcu1(skip)))); the coarsest block has no skip input."""

    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.rcu1 = ResidualConvUnit(dim, dtype=dtype, rngs=rngs)
        self.rcu2 = ResidualConvUnit(dim, dtype=dtype, rngs=rngs)
        self.out_conv = _conv(dim, dim, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        if skip is not None:
            x = x + self.rcu1(skip)
        return self.out_conv(upsample2x(self.rcu2(x)))


def postprocess(feat: jax.Array, depth_mode: tuple, conf_mode: tuple) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, 4) head output -> pointmap (B, H, W, 3) and confidence (B, H, W), in float32."""
    feat = feat.astype(jnp.float32)
    xyz, c = feat[..., :3], feat[..., 3]
    kind = depth_mode[0]
    if kind == "linear":
        pts = xyz
    else:
        d = geometry.safe_norm(xyz, keepdims=True)  # (B, H, W, 1); a zero vector gets a zero gradient
        direction = xyz / jnp.maximum(d, 1e-8)
        pts = direction * (jnp.expm1(d) if kind == "exp" else jnp.square(d))
    kind, vmin, vmax = conf_mode
    if kind == "exp":
        conf = vmin + jnp.minimum(jnp.exp(c), vmax - vmin)
    else:
        conf = (vmax - vmin) * jax.nn.sigmoid(c) + vmin
    return pts, conf


class DPTHead(nnx.Module):
    def __init__(self, cfg: HeadConfig, token_dims: tuple[int, int, int, int], patch_size: int, *,
                 dtype, rngs: nnx.Rngs):
        if patch_size != 16:
            raise ValueError(f"the DPT head is defined for patch size 16, got {patch_size}")
        self.cfg = cfg
        f = cfg.feature_dim
        self.reassemble = nnx.List([Reassemble(i, token_dims[i], cfg.layer_dims[i], dtype=dtype, rngs=rngs)
                                    for i in range(4)])
        self.project = nnx.List([_conv(cfg.layer_dims[i], f, 3, bias=False, dtype=dtype, rngs=rngs)
                                 for i in range(4)])
        self.fusion = nnx.List([FusionBlock(f, dtype=dtype, rngs=rngs) for _ in range(4)])
        self.out_conv1 = _conv(f, f // 2, 3, dtype=dtype, rngs=rngs)
        self.out_conv2 = _conv(f // 2, cfg.last_dim, 3, dtype=dtype, rngs=rngs)
        self.out_conv3 = _conv(cfg.last_dim, 4, 1, dtype=dtype, rngs=rngs)

    def __call__(self, hooks: list[jax.Array], grid: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
        """hooks: four (B, rows*cols, C_i) token maps of one view in raster order; grid: (rows, cols).

        Returns pts3d (B, 16*rows, 16*cols, 3) and conf (B, 16*rows, 16*cols), float32.
        """
        rows, cols = grid
        maps = [h.reshape(h.shape[0], rows, cols, h.shape[-1]) for h in hooks]  # (B, rows, cols, C_i)
        layers = [proj(stage(m)) for m, stage, proj in zip(maps, self.reassemble, self.project)]
        # Coarse to fine. The half-resolution map of stage 3 upsamples to an even size: crop it to stage 2's.
        path = self.fusion[3](layers[3])[:, : layers[2].shape[1], : layers[2].shape[2]]
        path = self.fusion[2](path, layers[2])
        path = self.fusion[1](path, layers[1])
        path = self.fusion[0](path, layers[0])  # (B, H/2, W/2, F)
        out = upsample2x(self.out_conv1(path))
        out = self.out_conv3(jax.nn.relu(self.out_conv2(out)))  # (B, H, W, 4)
        return postprocess(out, self.cfg.depth_mode, self.cfg.conf_mode)
