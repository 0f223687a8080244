"""Colour jitter: drawn by the input workers, applied on the devices.

torchvision's ColorJitter(0.5, 0.5, 0.5, 0.1) on float images: brightness, contrast, saturation and hue adjusted in
a random order, each factor drawn uniformly, values clipped to [0, 255] after each step and rounded to uint8 at the
end. A worker only draws a view's order and factors (`draw`, from the sample's numpy Generator, so a sample stays a
pure function of its seed) and ships them with the packed view; `apply` jitters the whole batch where it is unpacked
(fast3r_jax.data.packed), so the host's cores spend nothing on it (it was a quarter of a view's augmentation time).
Every adjustment is per pixel or uses the image mean, so it commutes with the packed layout's transposition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Parameters of one view: the order (a permutation of 0..3: brightness, contrast, saturation, hue), then the four
# factors (brightness, contrast, saturation multipliers; hue shift in turns).
IDENTITY = np.array([0, 1, 2, 3, 1.0, 1.0, 1.0, 0.0], np.float32)
_GREY = (0.2989, 0.587, 0.114)


def draw(rng: np.random.Generator, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5,
         hue: float = 0.1) -> np.ndarray:
    """(8,) float32 jitter parameters of one view (see IDENTITY for the layout)."""
    order = rng.permutation(4)
    factors = (rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
               rng.uniform(1 - saturation, 1 + saturation), rng.uniform(-hue, hue))
    return np.concatenate([order, factors]).astype(np.float32)


def _grayscale(img: jax.Array) -> jax.Array:
    return img @ jnp.asarray(_GREY, jnp.float32)  # (H, W)


def _blend(img: jax.Array, other: jax.Array | float, factor: jax.Array) -> jax.Array:
    """clip(factor * img + (1 - factor) * other, 0, 255)."""
    return jnp.clip(img * factor + other * (1 - factor), 0.0, 255.0)


def adjust_brightness(img: jax.Array, factor: jax.Array) -> jax.Array:
    """(H, W, 3) float32 in [0, 255]: blend with black."""
    return _blend(img, 0.0, factor)


def adjust_contrast(img: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the mean grey level of the image."""
    return _blend(img, _grayscale(img).mean(), factor)


def adjust_saturation(img: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the grey-level image."""
    return _blend(img, _grayscale(img)[..., None], factor)


def adjust_hue(img: jax.Array, shift: jax.Array) -> jax.Array:
    """Rotates the hue by `shift` turns (in [-0.5, 0.5]) in HSV space, by torchvision's formula (V = max(R, G, B) on
    the input's scale, S = (V - min) / V, hue in sixths of a turn) in float32.

    Back to RGB in closed form, elementwise (no sector table): channel n in (5, 3, 1) for (R, G, B) is
    V - V S clip(min(k, 4 - k), 0, 1) with k = (n + hue) mod 6, which is continuous where the hue wraps.
    """
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    value = img.max(-1)
    delta = value - img.min(-1)
    sat = jnp.where(value > 0, delta / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(delta > 0, delta, 1.0)
    sixths = jnp.where(value == r, (g - b) / safe, jnp.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    sixths = jnp.where(delta > 0, sixths, 0.0) + 6 * shift
    k = jnp.mod(jnp.stack([5 + sixths, 3 + sixths, 1 + sixths], -1), 6.0)  # (H, W, 3)
    return jnp.clip(value[..., None] * (1 - sat[..., None] * jnp.clip(jnp.minimum(k, 4 - k), 0.0, 1.0)), 0.0, 255.0)


_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _apply_one(img: jax.Array, params: jax.Array) -> jax.Array:
    """One (H, W, 3) uint8 image jittered by its (8,) parameters."""
    out = img.astype(jnp.float32)
    order, factors = params[:4].astype(jnp.int32), params[4:]
    for k in range(4):
        out = jax.lax.switch(order[k], _ADJUSTMENTS, out, factors[order[k]])
    return jnp.rint(out).astype(jnp.uint8)


def apply(img: jax.Array, params: jax.Array) -> jax.Array:
    """(..., H, W, 3) uint8 images jittered by their (..., 8) parameters (`draw`); traceable."""
    out = jax.vmap(_apply_one)(img.reshape(-1, *img.shape[-3:]), params.reshape(-1, params.shape[-1]))
    return out.reshape(img.shape)
