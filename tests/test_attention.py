import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast3r_jax.attention import dot_product_attention, resolve_implementation


def _naive(q, k, v, scale):
    """float64 reference: softmax(q k^T * scale) v per head."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_xla_path_matches_float64_reference():
    q, k, v = (jax.random.normal(key, (2, 37, 4, 16)) for key in jax.random.split(jax.random.key(0), 3))
    with jax.default_matmul_precision("highest"):
        out = dot_product_attention(q, k, v, scale=0.3, implementation="xla")
    ref = _naive(q, k, v, 0.3)
    assert out.shape == (2, 37, 4, 16) and out.dtype == jnp.float32
    assert np.abs(np.asarray(out) - ref).max() / np.abs(ref).max() < 1e-5


def test_xla_path_in_bfloat16_keeps_dtype_and_accuracy():
    q, k, v = (jax.random.normal(key, (1, 64, 2, 32)) for key in jax.random.split(jax.random.key(1), 3))
    out = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), scale=32 ** -0.5,
                                implementation="xla")
    assert out.dtype == jnp.bfloat16
    ref = _naive(q, k, v, 32 ** -0.5)
    assert np.abs(np.asarray(out, np.float32) - ref).max() / np.abs(ref).max() < 2e-2


def test_dispatch_on_cpu():
    assert jax.default_backend() == "cpu"
    assert resolve_implementation("auto", jnp.bfloat16) == "xla"
    assert resolve_implementation("auto", jnp.float32) == "xla"
    assert resolve_implementation("xla", jnp.float32) == "xla"
    with pytest.raises(ValueError, match="GPU"):
        resolve_implementation("cudnn", jnp.bfloat16)
    with pytest.raises(ValueError, match="unknown"):
        resolve_implementation("flash", jnp.float32)
