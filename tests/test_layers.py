"""Layers whose fast or safe formulation must keep PyTorch's definition: exact GELU, bilinear 2x upsampling and the
pointmap activation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx
from jax import ad_checkpoint

from fast3r_jax.model import layers
from fast3r_jax.model.dpt_head import postprocess, upsample2x
from fast3r_jax.model.transformer import gelu


def _exact_gelu(x: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))(x.astype(np.float64))


def test_gelu_float32_matches_exact_erf_definition():
    x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).normal(0, 3, 4000)]).astype(np.float32)
    got = np.asarray(gelu(jnp.asarray(x)), np.float64)
    # For x << 0, 1 + erf(x / sqrt 2) cancels (in PyTorch's formula too): the error is |x| float32 ulps of 1.
    np.testing.assert_allclose(got, _exact_gelu(x), rtol=2e-6, atol=1e-6)


def test_gelu_bfloat16_is_the_rounded_exact_value():
    x = jnp.asarray(np.linspace(-6, 6, 2001), jnp.bfloat16)
    got = np.asarray(gelu(x).astype(jnp.float32))
    want = np.asarray(jnp.asarray(_exact_gelu(np.asarray(x.astype(jnp.float32))), jnp.float32).astype(jnp.bfloat16)
                      .astype(jnp.float32))
    assert gelu(x).dtype == jnp.bfloat16
    np.testing.assert_allclose(got, want, rtol=2 ** -8, atol=1e-6)  # at most one bf16 rounding step apart


def test_gelu_gradient_matches_jax_exact_gelu():
    x = jnp.linspace(-5.0, 5.0, 101)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(x),
                               jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=1e-6)


def _interp_matrix(n: int) -> np.ndarray:
    """(2n, n) align_corners=True bilinear weights: output i samples input position i * (n - 1) / (2n - 1)."""
    m = np.zeros((2 * n, n))
    for i in range(2 * n):
        pos = i * (n - 1) / (2 * n - 1)
        lo = min(int(np.floor(pos)), n - 1)
        m[i, lo] += 1 - (pos - lo)
        if pos > lo:
            m[i, lo + 1] += pos - lo
    return m


@pytest.mark.parametrize("h, w", [(1, 1), (2, 3), (5, 8), (12, 16)])
def test_upsample2x_matches_separable_interpolation(h, w):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, 3)).astype(np.float32)
    want = np.einsum("ih,bhwc,jw->bijc", _interp_matrix(h), x.astype(np.float64), _interp_matrix(w))
    got = upsample2x(jnp.asarray(x))
    assert got.shape == (2, 2 * h, 2 * w, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_upsample2x_keeps_corners_and_reproduces_linear_ramps():
    h, w = 6, 9
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    x = jnp.asarray(np.stack([yy, xx], -1)[None])  # (1, H, W, 2): the pixel's own coordinates
    up = np.asarray(upsample2x(x))[0]
    ii, jj = np.meshgrid(np.arange(2 * h), np.arange(2 * w), indexing="ij")
    np.testing.assert_allclose(up[..., 0], ii * (h - 1) / (2 * h - 1), atol=1e-5)
    np.testing.assert_allclose(up[..., 1], jj * (w - 1) / (2 * w - 1), atol=1e-5)
    np.testing.assert_array_equal(up[[0, 0, -1, -1], [0, -1, 0, -1]], np.asarray(x)[0][[0, 0, -1, -1], [0, -1, 0, -1]])


def test_upsample2x_bfloat16_keeps_dtype():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 5, 8)), jnp.bfloat16)
    got = upsample2x(x)
    want = upsample2x(x.astype(jnp.float32))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), np.asarray(want), rtol=2 ** -8, atol=1e-6)


def test_upsample2x_gradient_is_the_transposed_interpolation():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 5, 4)), jnp.float32)
    cot = np.random.default_rng(3).normal(size=(2, 6, 10, 4))
    grad = jax.grad(lambda v: jnp.sum(upsample2x(v) * cot))(x)
    want = np.einsum("ih,bijc,jw->bhwc", _interp_matrix(3), cot, _interp_matrix(5))
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-5)


def test_gelu_backward_keeps_only_the_input(capsys):
    x = jnp.ones((64, 256), jnp.bfloat16)
    ad_checkpoint.print_saved_residuals(lambda v: gelu(v).astype(jnp.float32).sum(), x)
    saved = [line for line in capsys.readouterr().out.splitlines() if "[64,256]" in line]
    assert len(saved) == 1 and saved[0].startswith("bf16[64,256] from the argument"), saved  # no float32 intermediates of x's size


@pytest.mark.parametrize("mode", ["exp", "square"])
def test_pointmap_activation_has_a_finite_gradient_at_zero(mode):
    feat = jnp.zeros((1, 2, 2, 4)).at[0, 0, 0, :3].set(jnp.asarray([0.3, -0.2, 0.1]))  # one nonzero, three zero xyz
    grad = jax.grad(lambda f: postprocess(f, (mode, -np.inf, np.inf), ("exp", 1.0, np.inf))[0].sum())(feat)
    assert np.isfinite(np.asarray(grad)).all()
    pts = np.asarray(postprocess(feat, (mode, -np.inf, np.inf), ("exp", 1.0, np.inf))[0])
    d = np.linalg.norm([0.3, -0.2, 0.1])
    scale = np.expm1(d) if mode == "exp" else d * d
    np.testing.assert_allclose(pts[0, 0, 0], np.asarray([0.3, -0.2, 0.1]) / d * scale, rtol=1e-6)
    assert not pts[0, 1].any()


LAYER_CASES = [  # (ours, flax's, constructor arguments, input shape)
    (layers.Linear, nnx.Linear, dict(in_features=24, out_features=40), (2, 50, 24)),
    (layers.LinearGeneral, nnx.LinearGeneral, dict(in_features=24, out_features=(3, 4, 8)), (2, 50, 24)),
    (layers.LinearGeneral, nnx.LinearGeneral, dict(in_features=(4, 8), out_features=24, axis=(-2, -1)),
     (2, 50, 4, 8)),
    (layers.Conv, nnx.Conv, dict(in_features=6, out_features=8, kernel_size=(3, 3), strides=2,
                                 padding=((1, 1), (1, 1))), (2, 33, 40, 6)),
    (layers.Conv, nnx.Conv, dict(in_features=3, out_features=8, kernel_size=(4, 4), strides=4, padding="VALID"),
     (2, 32, 48, 3)),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("ours,theirs,kwargs,shape", LAYER_CASES)
def test_layers_keep_flax_parameters_and_forward_bit_for_bit(ours, theirs, kwargs, shape, dtype):
    a, b = ours(**kwargs, dtype=dtype, rngs=nnx.Rngs(0)), theirs(**kwargs, dtype=dtype, rngs=nnx.Rngs(0))
    params_a, params_b = nnx.state(a, nnx.Param).to_pure_dict(), nnx.state(b, nnx.Param).to_pure_dict()
    assert jax.tree.structure(params_a) == jax.tree.structure(params_b)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)))
    x = jax.random.normal(jax.random.key(1), shape)
    ya, yb = a(x), b(x)
    assert ya.dtype == yb.dtype == dtype and np.array_equal(np.asarray(ya, np.float32), np.asarray(yb, np.float32))


def test_bias_gradient_is_summed_in_float32():
    """Over 98,304 bf16 pixels the bias gradient equals the float32 sum of the bf16 cotangent (to the float32
    rounding of a long sum), and the input's cotangent passes through unchanged."""
    g = jax.random.normal(jax.random.key(0), (2, 192, 256, 4)).astype(jnp.bfloat16) + 1  # (B, H, W, C), mean 1
    y, bias = jnp.zeros_like(g), jnp.zeros((4,), jnp.float32)
    _, vjp = jax.vjp(layers.add_bias, y, bias)
    gy, gb = vjp(g)
    assert gb.dtype == jnp.float32 and gy.dtype == jnp.bfloat16 and np.array_equal(gy, g)
    exact = np.asarray(g, np.float64).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(gb), exact, rtol=1e-5)
