"""ShardedEngine on 8 host CPU devices (tests/conftest.py) equals the one-device Engine, and the fusion
transformer's tokens are really split over the devices.

Views: 9 landscape 32x48 and 3 portrait 64x32 (6 and 8 tokens per view): neither group's view count divides the
devices, so padding views are scattered through the token shards and must be masked.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fast3r_jax import sharding as sharding_lib
from fast3r_jax.inference.engine import Engine
from fast3r_jax.inference.sharded import METHODS, Group, SequenceParallel, ShardedEngine
from fast3r_jax.model.fast3r import OUTPUT_KEYS
from tests.helpers.device_bytes import bytes_per_device
from tests.helpers.parity import assert_within, rel_err, view_errors
from tests.helpers.small_model import small_config, small_params

TOL = 1e-5  # max |out - ref| / max |ref|, float32
CFG = small_config()
MESHES = [(1, 8, 1), (1, 4, 2), (2, 4, 1)]  # (data, seq, tensor)
SHAPES = [(32, 48)] * 9 + [(64, 32)] * 3


@pytest.fixture(scope="module")
def params():
    return small_params(CFG)


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(0)
    return [dict(img=rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)) for h, w in SHAPES]


@pytest.fixture(scope="module")
def reference(params, views):
    engine = Engine(CFG, params, "float32", encoder_chunk=4, head_chunk=4)
    ids = engine.image_ids(len(views), seed=3)
    return ids, [{k: np.asarray(o[k]) for k in OUTPUT_KEYS} for o in engine(views, ids)]


def _engine(params, shape, method, chunk=16):
    mesh = sharding_lib.make_inference_mesh(*shape)
    return ShardedEngine(CFG, params, mesh, "float32", encoder_chunk=1, head_chunk=1, seq_attention=method,
                         seq_chunk=chunk)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "data{}_seq{}_tensor{}".format(*s))
@pytest.mark.parametrize("method", METHODS)
def test_sharded_engine_matches_one_device(params, views, reference, method, shape):
    ids, ref = reference
    out = _engine(params, shape, method)(views, ids)
    err = assert_within(view_errors(out, ref), TOL, count=4 * len(views))
    print(f"{method} data={shape[0]} seq={shape[1]} tensor={shape[2]}: max rel. error vs one device {err:.1e}")
    assert [o["conf"].shape for o in out] == [r["conf"].shape for r in ref]
    devices = [next(iter(o["conf"].devices())).id for o in out]
    assert devices[:9] == list(range(8)) + [0]  # each view stays on the device that decoded it


def _layout(shape, method, chunk=16) -> SequenceParallel:
    mesh = sharding_lib.make_inference_mesh(*shape)
    groups = (Group.make(11, 6, mesh.size, 1, 1), Group.make(3, 8, mesh.size, 1, 1))
    return SequenceParallel(mesh, method, "xla", chunk, groups)


def _dense(q, k, v, valid, scale):
    """float64 attention over the valid keys only."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k[:, valid]) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v[:, valid])


@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 4, 2)], ids=["seq8", "seq4_tensor2"])
@pytest.mark.parametrize("method", METHODS)
def test_attention_across_shards_is_exact(method, shape):
    layout = _layout(shape, method, chunk=8)  # chunks smaller than a shard: the kernel pads and loops
    tokens = layout.shards * layout.local
    spec = sharding_lib.logical_spec(layout.mesh, (None, "tokens", "heads", None), (1, tokens, 4, 16))
    q, k, v = (jax.device_put(jax.random.normal(key, (1, tokens, 4, 16)), NamedSharding(layout.mesh, spec))
               for key in jax.random.split(jax.random.key(0), 3))
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda q, k, v: layout(q, k, v, scale=0.3))(q, k, v)
    valid = layout.valid().reshape(-1)
    ref = _dense(q, k, v, valid, 0.3)
    err = rel_err(np.asarray(out)[:, valid], ref[:, valid])
    print(f"{method} {shape}: attention over {valid.sum()} of {tokens} tokens, max rel. error {err:.1e}")
    assert 0 < valid.sum() < tokens  # padding present
    assert err <= TOL
    assert out.sharding.spec == spec
    assert {s.data.shape for s in out.addressable_shards} == {(1, layout.local, 4 // shape[2], 16)}


def _fusion_inputs(engine, layout):
    """Encoder chunks as the engine hands them to the fusion transformer, and the image ids."""
    sharding = NamedSharding(layout.mesh, sharding_lib.logical_spec(layout.mesh, ("views",)))
    enc = [[jax.device_put(np.ones((layout.devices * c, g.tokens, CFG.encoder.embed_dim), np.float32), sharding)
            for c in g.enc_chunks] for g in layout.groups]
    return enc, jnp.zeros((1, len(layout.view_lengths())), jnp.int32)


@pytest.mark.parametrize("shape,method", [((1, 8, 1), "ring"), ((1, 4, 2), "ring"), ((1, 4, 2), "allgather")])
def test_fusion_tokens_are_split_over_devices(params, shape, method):
    engine = _engine(params, shape, method)
    layout = _layout(shape, method)
    enc, ids = _fusion_inputs(engine, layout)
    tokens, local, dim, tensor = layout.shards * layout.local, layout.local, CFG.fusion.embed_dim, shape[2]

    def fuse(state, enc, ids):
        model = nnx.merge(engine._graphdef, state)
        return model.fuse(layout.gather_tokens(enc), layout.view_lengths(), ids, attention=layout)

    fn = jax.jit(fuse)
    hooks = fn(engine._state, enc, ids)
    per_device = bytes_per_device(hooks[1:])
    total = sum(h.nbytes for h in hooks[1:])
    print(f"{method} {shape}: fusion hooks {sorted(set(per_device.values()))} bytes per device of {total}")
    assert {s.data.shape for s in hooks[-1].addressable_shards} == {(1, local, dim)}
    assert set(per_device.values()) == {total // layout.shards}  # 1/S of the tokens on each device

    hlo = fn.lower(engine._state, enc, ids).compile().as_text()
    count = lambda op: len(re.findall(rf"\b{op}\(", hlo))  # noqa: E731
    assert f"f32[1,{local},{dim}]" in hlo and f"f32[1,{tokens},{dim}]" not in hlo  # the residual stream is local
    assert (count("all-reduce") > 0) == (tensor > 1)  # tensor-parallel projections
    gathered_kv = f"f32[2,1,{tokens},{4 // tensor},{dim // 4}]"
    if method == "ring":
        assert count("collective-permute") == layout.shards - 1 and gathered_kv not in hlo
    else:
        assert count("collective-permute") == 0 and gathered_kv in hlo


def test_layout_deals_every_view_once():
    layout = _layout((1, 4, 2), "ring")
    views = layout.views()
    for g, group in enumerate(layout.groups):
        positions = sorted(p for h, p in views if h == g)
        assert positions == list(range(group.slots * layout.devices))
        rows = [p for c in range(len(group.enc_chunks)) for p in group.rows(group.enc_chunks, c, layout.devices)]
        assert sorted(p for p in rows if p is not None) == list(range(group.count))
    assert layout.unit == 2 and sum(layout.view_lengths()) == layout.shards * layout.local
    ids = np.arange(len(views))
    np.testing.assert_array_equal(layout.embedding_ids(ids)[0, :4], [0, 0, 0, 1])  # 6-token views: 3 units each
    assert layout.valid().sum() == 11 * 6 + 3 * 8


def test_only_fusion_weights_are_tensor_parallel(params):
    specs = sharding_lib.inference_param_specs(params, sharding_lib.make_inference_mesh(1, 4, 2))
    assert specs["fusion"]["blocks"]["layers"]["attn"]["qkv"]["kernel"] == P(None, None, None, "tensor", None)
    assert specs["fusion"]["blocks"]["layers"]["mlp"]["fc2"]["kernel"] == P(None, "tensor", None)
    assert specs["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"] == P()
    assert all(spec == P() for spec in jax.tree.leaves(specs["global_head"], is_leaf=lambda x: isinstance(x, P)))


def test_bad_arguments_raise(params):
    with pytest.raises(ValueError, match="seq_attention"):
        _engine(params, (1, 8, 1), "scatter")
    with pytest.raises(ValueError, match="mesh axes"):
        ShardedEngine(CFG, params, sharding_lib.make_mesh(8, 1))
    with pytest.raises(ValueError, match="devices"):
        sharding_lib.make_inference_mesh(3, 3, 1)
    assert sharding_lib.make_inference_mesh(tensor=2).shape == {"data": 1, "seq": 4, "tensor": 2}
    assert sharding_lib.logical_spec(sharding_lib.make_inference_mesh(2, 4), ("views",)) == \
        P(("data", "seq", "tensor"))


def test_local_kernel_is_cudnn_or_xla(params):
    with pytest.raises(ValueError, match=r"kernel must be one of \('cudnn', 'xla'\), got 'splash'"):
        SequenceParallel(sharding_lib.make_inference_mesh(1, 8, 1), "ring", "splash", 16, ())
    # a model set to splash attention runs the XLA kernel across token shards
    engine = ShardedEngine(CFG.replace(attention="splash"), params, sharding_lib.make_inference_mesh(1, 8, 1),
                           "float32")
    assert engine.attention.kernel == "splash" and engine.layout({((32, 48), "landscape"): [0, 1]}).kernel == "xla"
