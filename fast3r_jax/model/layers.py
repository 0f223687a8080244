"""Dense and convolution layers whose bias gradients are summed in float32.

flax's layers add the bias in the compute dtype, so under bf16 the bias gradient, a sum over every token or pixel,
is a bf16 reduction, and XLA's CPU backend accumulates it in bf16: over the pixels of an image it loses about half
its value (PyTorch accumulates the same sum in float32). These subclasses keep flax's parameters, initialisation
and forward computation bit for bit, and add the bias through `add_bias`, whose gradient is summed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y (..., *bias.shape) + bias, the bias cast to y's dtype first (as flax's layers do)."""
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return add_bias(y, bias), bias


def _add_bias_bwd(bias: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    leading = tuple(range(g.ndim - bias.ndim))
    return g, jnp.sum(g.astype(jnp.float32), axis=leading).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Linear(nnx.Linear):
    """nnx.Linear (features on the last axis)."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        inputs, kernel = promote_dtype((inputs, self.kernel[...]), dtype=self.dtype)
        y = jax.lax.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        return y if self.bias is None else add_bias(y, self.bias[...])


class LinearGeneral(nnx.LinearGeneral):
    """nnx.LinearGeneral without batch axes: contracts `axis` of the input with the kernel's leading axes."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.batch_axis:
            raise NotImplementedError("LinearGeneral with batch_axis")
        axis = tuple(a % inputs.ndim for a in ((self.axis,) if isinstance(self.axis, int) else self.axis))
        inputs, kernel = promote_dtype((inputs, self.kernel[...]), dtype=self.dtype)
        y = jax.lax.dot_general(inputs, kernel, ((axis, tuple(range(len(axis)))), ((), ())),
                                precision=self.precision)
        return y if self.bias is None else add_bias(y, self.bias[...])


class Conv(nnx.Conv):
    """nnx.Conv on NHWC inputs with one batch axis, explicit or 'VALID' padding, no dilation or groups."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if inputs.ndim != 4 or self.feature_group_count != 1 or self.kernel_dilation not in (None, 1, (1, 1)):
            raise NotImplementedError("Conv takes (B, H, W, C) inputs, without groups or dilation")
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        padding = self.padding if isinstance(self.padding, str) else tuple(tuple(p) for p in self.padding)
        inputs, kernel = promote_dtype((inputs, self.kernel[...]), dtype=self.dtype)
        numbers = jax.lax.conv_dimension_numbers(inputs.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
        y = jax.lax.conv_general_dilated(inputs, kernel, strides, padding, lhs_dilation=(1, 1),
                                         rhs_dilation=(1, 1), dimension_numbers=numbers, precision=self.precision)
        return y if self.bias is None else add_bias(y, self.bias[...])
