"""Tests of the torch-free checkpoint readers against files written by real torch.save / safetensors.

The fixtures and their expected arrays come from tests/data/torch_fixtures/make_fixtures.py; every
comparison is bit-exact (dtype, shape and raw bits).
"""

import json
import os
import pathlib
import pickle
import shutil
import subprocess
import zipfile

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from fast3r_jax.convert.readers import (
    CheckpointFormatError,
    InertObject,
    UnsafeCheckpointError,
    load_state_dict,
    read_safetensors,
    read_torch_pickle,
)

FIXTURES = pathlib.Path(__file__).parent / "data" / "torch_fixtures"
LIGHTNING_NET_KEYS = ["encoder.patch_embed.proj.weight", "decoder.dec_norm.bias",
                      "downstream_head.dpt.head.0.weight"]


@pytest.fixture(scope="module")
def expected():
    """Expected arrays keyed by their path "<file stem>|<key>|...", rebuilt from stored bits and dtypes."""
    with np.load(FIXTURES / "expected.npz") as npz:
        dtypes = json.loads(str(npz["dtypes"]))
        return {k: npz[k].view(_numpy_dtype(dtypes[k])) for k in dtypes}


def _numpy_dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def tensors_of(obj, prefix):
    """Every array in a nested object, keyed like make_fixtures.py keys the expected arrays."""
    if isinstance(obj, np.ndarray):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors_of(value, f"{prefix}|{key}").items()}


def assert_bit_exact(actual, expected):
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        got = actual[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        width = f"u{want.dtype.itemsize}"
        np.testing.assert_array_equal(np.require(got, requirements="C").view(width), want.view(width), err_msg=key)


def subset(expected, stem):
    return {k: v for k, v in expected.items() if k.startswith(stem + "|")}


@pytest.mark.parametrize("name", ["plain.pth", "lightning.ckpt", "lightning_extra.ckpt", "dust3r.pth"])
def test_torch_pickle_bit_exact(name, expected):
    stem = name.split(".")[0]
    assert_bit_exact(tensors_of(read_torch_pickle(FIXTURES / name), stem), subset(expected, stem))


def test_safetensors_bit_exact(expected):
    assert_bit_exact(tensors_of(read_safetensors(FIXTURES / "weights.safetensors"), "weights"),
                     subset(expected, "weights"))


def test_strided_views_shared_storage_and_scalar():
    sd = read_torch_pickle(FIXTURES / "plain.pth")
    # `transposed` is base.t() and `window` is base[1:3, 2:5] of the same (4, 6) storage.
    np.testing.assert_array_equal(sd["transposed"].T[1:3, 2:5], sd["window"])
    # shared_a = arange(10)[:6].view(2, 3) and shared_b = arange(10)[4:] share one storage.
    np.testing.assert_array_equal(sd["shared_a"], np.arange(6, dtype=np.int32).reshape(2, 3))
    np.testing.assert_array_equal(sd["shared_b"], np.arange(4, 10, dtype=np.int32))
    sd["shared_a"][1, 1] = -1  # element 4 of the storage: the arrays must not alias each other
    assert sd["shared_b"][0] == 4
    assert sd["transposed"].flags.c_contiguous and sd["transposed"].flags.writeable
    assert sd["scalar"].shape == () and sd["scalar"] == np.float32(2.5)


def test_lightning_non_tensor_entries():
    ckpt = read_torch_pickle(FIXTURES / "lightning.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"], ckpt["pytorch-lightning_version"]) == (2, 40, "2.5.0")
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["betas"] == (0.9, 0.95) and group["params"] == [0, 1]
    assert ckpt["lr_schedulers"][0]["T_max"] == 10
    hparams = ckpt["hyper_parameters"]
    assert hparams["tags"] == {"fast3r", "tiny"} and hparams["blob"] == b"\x00\xff"
    # A Hydra partial of the optimizer class: rebuilt as inert stubs, the real classes are never called.
    partial = hparams["optimizer"]
    assert isinstance(partial, InertObject) and partial.qualname == "functools.partial"
    optimizer_cls = partial.args[0]
    assert issubclass(optimizer_cls, InertObject) and optimizer_cls.qualname == "torch.optim.adamw.AdamW"
    assert partial.state == (optimizer_cls, (), {"lr": 1e-4, "weight_decay": 0.05}, None)


def test_dust3r_args_namespace_is_inert():
    args = read_torch_pickle(FIXTURES / "dust3r.pth")["args"]
    assert isinstance(args, InertObject) and args.qualname == "argparse.Namespace"
    assert args.state == {"model": "AsymmetricCroCo3DStereo(patch_size=16)", "lr": 1e-4, "epochs": 3}


def test_load_state_dict_plain_torch(expected):
    state, layout = load_state_dict(FIXTURES / "plain.pth")
    assert layout == "torch"
    assert_bit_exact(tensors_of(state, "plain"), subset(expected, "plain"))


def test_load_state_dict_lightning_strips_net_prefix(expected):
    state, layout = load_state_dict(FIXTURES / "lightning.ckpt")
    assert layout == "lightning"
    assert list(state) == LIGHTNING_NET_KEYS  # bookkeeping buffers dropped, order kept
    want = {f"lightning|{k}": expected[f"lightning|state_dict|net.{k}"] for k in LIGHTNING_NET_KEYS}
    assert_bit_exact(tensors_of(state, "lightning"), want)


def test_load_state_dict_lightning_refuses_unknown_keys():
    with pytest.raises(CheckpointFormatError, match=r"lightning_extra\.ckpt.*'criterion\.scale'"):
        load_state_dict(FIXTURES / "lightning_extra.ckpt")


def test_load_state_dict_dust3r(expected):
    state, layout = load_state_dict(FIXTURES / "dust3r.pth")
    assert layout == "dust3r"
    assert_bit_exact(tensors_of(state, "dust3r|model"), subset(expected, "dust3r"))


def test_load_state_dict_safetensors_file(expected):
    state, layout = load_state_dict(FIXTURES / "weights.safetensors")
    assert layout == "safetensors"
    assert_bit_exact(tensors_of(state, "weights"), subset(expected, "weights"))


@pytest.mark.parametrize("source,target", [("weights.safetensors", "model.safetensors"),
                                           ("plain.pth", "pytorch_model.bin")])
def test_load_state_dict_huggingface_folder(tmp_path, expected, source, target):
    shutil.copy(FIXTURES / source, tmp_path / target)
    state, layout = load_state_dict(tmp_path)
    assert layout == "huggingface"
    stem = source.split(".")[0]
    assert_bit_exact(tensors_of(state, stem), subset(expected, stem))


def test_load_state_dict_sharded_huggingface_folder(tmp_path, expected):
    arrays = read_safetensors(FIXTURES / "weights.safetensors")
    keys = sorted(arrays)
    shards = {"model-00001-of-00002.safetensors": keys[:4], "model-00002-of-00002.safetensors": keys[4:]}
    for shard, shard_keys in shards.items():
        safetensors.numpy.save_file({k: arrays[k] for k in shard_keys}, str(tmp_path / shard))
    weight_map = {k: shard for shard, shard_keys in shards.items() for k in shard_keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    state, layout = load_state_dict(tmp_path)
    assert layout == "huggingface" and list(state) == keys
    assert_bit_exact(tensors_of(state, "weights"), subset(expected, "weights"))


def test_sharded_index_with_missing_key(tmp_path):
    safetensors.numpy.save_file({"encoder.a": np.zeros(2, np.float32)}, str(tmp_path / "s1.safetensors"))
    index = {"weight_map": {"encoder.a": "s1.safetensors", "encoder.b": "s1.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointFormatError, match=r"'encoder\.b'"):
        load_state_dict(tmp_path)


def test_truncated_safetensors(tmp_path):
    data = (FIXTURES / "weights.safetensors").read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])
    data_size = len(data) - 8 - header_size - 3
    first_cut = next(k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][1] > data_size)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:-3])
    with pytest.raises(CheckpointFormatError, match=rf"cut\.safetensors: tensor '{first_cut}'.*truncated"):
        read_safetensors(path)
    path.write_bytes(data[:8 + header_size // 2])
    with pytest.raises(CheckpointFormatError, match=r"cut\.safetensors: header claims .* \(truncated\?\)"):
        read_safetensors(path)


def test_inconsistent_safetensors_offsets(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(CheckpointFormatError, match=r"bad\.safetensors: tensor 'x'.*needs 16"):
        read_safetensors(path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_state_dict(tmp_path / "nope.pth")


def test_folder_without_weights_lists_what_was_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as info:
        load_state_dict(tmp_path)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        assert name in str(info.value)


class _Hostile:
    """Pickles as a call of `func(*args)`, the classic code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_torch_zip(path, obj):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        zf.writestr("archive/byteorder", "little")


@pytest.mark.parametrize("payload,refused", [
    (lambda marker: _Hostile(os.system, f"touch '{marker}'"), "posix.system"),
    (lambda marker: _Hostile(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    (lambda marker: _Hostile(getattr, "", "join"), "builtins.getattr"),
    (lambda marker: _Hostile(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
])
def test_hostile_pickle_is_refused(tmp_path, payload, refused):
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pth"
    # The payload hides next to an ordinary-looking entry, as it would inside a real checkpoint.
    _write_torch_zip(path, {"epoch": 1, "model": {"w": payload(marker)}})
    with pytest.raises(UnsafeCheckpointError, match=rf"hostile\.pth: .*'{refused}'"):
        load_state_dict(path)
    assert not marker.exists()


def test_legacy_pickle_file_is_rejected_without_unpickling(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(_Hostile(os.system, f"touch '{marker}'"), protocol=2))
    with pytest.raises(CheckpointFormatError, match=r"legacy\.pth: not a zip-format .*re-save"):
        read_torch_pickle(path)
    assert not marker.exists()


def test_big_endian_archive(tmp_path, expected):
    """The same archive with a 'big' byteorder record and byte-swapped float32 storages reads identically."""
    path = tmp_path / "big_endian.pth"
    with zipfile.ZipFile(FIXTURES / "dust3r.pth") as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.startswith("dust3r/data/"):  # dust3r.pth holds float32 storages only
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            elif info.filename == "dust3r/byteorder":
                data = b"big"
            dst.writestr(info, data)
    assert_bit_exact(tensors_of(read_torch_pickle(path), "dust3r"), subset(expected, "dust3r"))
