import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast3r_jax.model.attention import XLA_CHUNK, AttentionImpl
from fast3r_jax.sharding import resolve_attention


def dot_product_attention(q, k, v, *, scale, implementation, mesh=None):
    """The kernel a step or engine would resolve for `implementation` (and `mesh`), applied to q, k, v."""
    return resolve_attention(implementation, q.dtype, mesh)(q, k, v, scale=scale)


def resolve_implementation(implementation, dtype, mesh=None) -> str:
    """The kernel name `resolve_attention` picks."""
    return resolve_attention(implementation, dtype, mesh).kernel


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


def test_xla_blockwise_past_max_logits_matches_reference_and_gradient():
    """Past `max_logits` the xla kernel runs flash attention in XLA (query x key blocks of XLA_CHUNK, the last
    padded): the float64 reference's output to 1e-5 and the explicit path's gradient, with no (N, N) logits."""
    length = XLA_CHUNK + 76  # two blocks, the second padded
    q, k, v = _qkv(7, (1, length, 2, 16))
    blockwise, explicit = AttentionImpl("xla", max_logits=0), AttentionImpl("xla")
    with jax.default_matmul_precision("highest"):
        out = blockwise(q, k, v, scale=0.25)
        weights = jax.random.normal(jax.random.key(8), q.shape)
        grads = [jax.grad(lambda q, k, v: (impl(q, k, v, scale=0.25) * weights).sum(), argnums=(0, 1, 2))(q, k, v)
                 for impl in (blockwise, explicit)]
    ref = _naive(q, k, v, 0.25)
    assert out.shape == q.shape and out.dtype == jnp.float32
    assert np.abs(np.asarray(out) - ref).max() / np.abs(ref).max() < 1e-5
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: blockwise(q, k, v, scale=0.25))(q, k, v))
    assert f"{length},{length}]" not in jaxpr and f"{XLA_CHUNK},{XLA_CHUNK}]" in jaxpr
    assert f"{length},{length}]" in str(jax.make_jaxpr(lambda q, k, v: explicit(q, k, v, scale=0.25))(q, k, v))


def test_dispatch_on_cpu():
    assert jax.default_backend() == "cpu"
    assert resolve_implementation("auto", jnp.bfloat16) == "xla"
    assert resolve_implementation("auto", jnp.float32) == "xla"
    assert resolve_implementation("xla", jnp.float32) == "xla"
    with pytest.raises(ValueError, match="GPU"):
        resolve_implementation("cudnn", jnp.bfloat16)
    with pytest.raises(ValueError, match="unknown"):
        resolve_implementation("flash", jnp.float32)


def _qkv(seed: int, shape: tuple[int, ...]) -> list[jax.Array]:
    return [jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(seed), 3)]


@pytest.mark.parametrize("length", [256, 200])  # a multiple of the 128-token splash tile, and one padded to 256
def test_splash_interpret_matches_xla(length):
    """Pallas splash attention in interpret mode (CPU) equals the XLA path in float32 to 1e-5; padded keys get no
    weight (200 tokens run as 256 with the padding in its own segment)."""
    q, k, v = _qkv(2, (2, length, 3, 32))
    out = dot_product_attention(q, k, v, scale=0.2, implementation="splash")
    with jax.default_matmul_precision("highest"):
        ref = dot_product_attention(q, k, v, scale=0.2, implementation="xla")
    assert out.shape == (2, length, 3, 32) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("implementation", ["xla", "splash"])
def test_bfloat16_keeps_dtype_and_accuracy(implementation):
    q, k, v = _qkv(6, (1, 128, 2, 32))
    out = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), scale=32 ** -0.5,
                                implementation=implementation)
    assert out.dtype == jnp.bfloat16
    ref = _naive(q, k, v, 32 ** -0.5)
    assert np.abs(np.asarray(out, np.float32) - ref).max() / np.abs(ref).max() < 2e-2


def test_splash_gradient_with_padding_matches_xla():
    """The splash backward kernels (training) agree with XLA's gradient; padded tokens take none of it."""
    q, k, v = _qkv(3, (1, 200, 2, 32))
    weights = jax.random.normal(jax.random.key(4), (1, 200, 2, 32))

    def grads(impl):
        def loss(q, k, v):
            return (dot_product_attention(q, k, v, scale=0.2, implementation=impl) * weights).sum()
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    with jax.default_matmul_precision("highest"):
        ref = grads("xla")
    for got, want in zip(grads("splash"), ref):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_splash_under_mesh_shards_batch_and_heads():
    """Resolved for a ('data', 'tensor') mesh the kernel runs in a shard_map (as Mosaic needs on TPU), each
    device on its batch rows and heads; the result equals XLA's."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from fast3r_jax.sharding import make_mesh

    mesh = make_mesh(data=4, tensor=2)
    spec = NamedSharding(mesh, P("data", None, "tensor", None))
    q, k, v = (jax.device_put(x, spec) for x in _qkv(5, (4, 200, 2, 32)))
    attend = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, scale=0.2, implementation="splash", mesh=mesh))
    assert "shard_map" in str(jax.make_jaxpr(attend)(q, k, v))
    out = attend(q, k, v)
    with jax.default_matmul_precision("highest"):
        ref = dot_product_attention(q, k, v, scale=0.2, implementation="xla")
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_dispatch_splash(monkeypatch):
    from fast3r_jax.sharding import make_mesh

    assert resolve_implementation("splash", jnp.float32) == "splash"  # interpret mode off TPU
    assert resolve_implementation("auto", jnp.float32) == "xla"  # CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    # 8 test devices and no mesh: a Mosaic kernel could not be partitioned, so auto keeps XLA
    assert resolve_implementation("auto", jnp.bfloat16) == "xla"
    mesh = make_mesh(data=4, tensor=2)
    assert resolve_implementation("auto", jnp.bfloat16, mesh) == "splash"
    assert resolve_implementation("auto", jnp.float32, mesh) == "splash"
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert resolve_implementation("auto", jnp.float32) == "splash"
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'.*splash"):
        resolve_implementation("flash", jnp.float32)
