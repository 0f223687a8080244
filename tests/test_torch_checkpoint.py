"""Tests of the torch-free checkpoint readers against files written by real torch.save / safetensors.

The fixtures and their expected arrays come from tests/data/torch_fixtures/make_fixtures.py; every
comparison is bit-exact (dtype, shape and raw bits).
"""

import functools
import json
import os
import pathlib
import pickle
import re
import shutil
import struct
import subprocess
import tracemalloc
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
from fast3r_jax.errors import InputError

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


# ----------------------------------------------------------------------------- hostile files: bounded, strict reading


def _p(value):
    """The opcodes that pickle a plain value (protocol 2, without PROTO and STOP), to splice into a pickle."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _tensor_pickle(numel, offset, size, stride, storage="FloatStorage"):
    """data.pkl of torch.save({'w': tensor}) for a tensor over storage 'data/0', written opcode by opcode (the test
    has no torch): _rebuild_tensor_v2(persistent ('storage', torch.<storage>, '0', 'cpu', numel), offset, size,
    stride, False, OrderedDict())."""
    storage_id = (b"(" + _p("storage") + b"ctorch\n" + storage.encode() + b"\n" + _p("0") + _p("cpu") + _p(numel)
                  + b"tQ")
    rebuild = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_id + _p(offset) + _p(tuple(size))
               + _p(tuple(stride)) + b"\x89ccollections\nOrderedDict\n)RtR")
    return b"\x80\x02}" + _p("w") + rebuild + b"s."


def _write_tensor_zip(path, pickled, storage=b"", compress_type=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickled)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", storage, compress_type=compress_type, compresslevel=1)


def assert_refused(call, error, pattern, declared_bytes):
    """`call` raises `error` matching `pattern`, writes nothing next to its input, and never allocates more than
    a small fraction of what the hostile file declares (tracemalloc sees numpy, zlib and pickle allocations)."""
    folder = pathlib.Path(call.args[0]).parent
    before = sorted(folder.iterdir())
    tracemalloc.start()
    try:
        with pytest.raises(error, match=pattern) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < declared_bytes / 16, f"peak {peak} bytes for a file declaring {declared_bytes}"
    assert sorted(folder.iterdir()) == before
    return info.value


def test_readable_tensor_zip_is_read(tmp_path):
    """The hand-written pickle of the tests below reads as intended when nothing in it is hostile: a permuted
    (3, 2) view with storage offset 1 over 7 floats."""
    path = tmp_path / "ok.pth"
    _write_tensor_zip(path, _tensor_pickle(7, 1, (3, 2), (1, 3)), np.arange(7, dtype="<f4").tobytes())
    np.testing.assert_array_equal(read_torch_pickle(path)["w"], np.arange(1, 7, dtype=np.float32).reshape(2, 3).T)


@pytest.mark.parametrize("numel,size,stride", [
    (1, (16384, 16384), (0, 0)),  # a few hundred bytes declaring a 1 GiB expanded tensor
    (8191, (4096, 4096), (1, 1)),  # overlapping strides: 64 MiB out of a 32 KiB storage
])
def test_self_overlapping_view_is_refused_before_copying(tmp_path, numel, size, stride):
    path = tmp_path / "expand.pth"
    _write_tensor_zip(path, _tensor_pickle(numel, 0, size, stride), bytes(4 * numel))
    err = assert_refused(functools.partial(load_state_dict, path), CheckpointFormatError,
                         r"expand\.pth: tensor in storage 'data/0'.*more than once.*contiguous", 4 * size[0] * size[1])
    assert isinstance(err, InputError)


def test_view_beyond_its_storage_is_refused(tmp_path):
    path = tmp_path / "beyond.pth"
    _write_tensor_zip(path, _tensor_pickle(4, 3, (2,), (1,)), bytes(16))
    with pytest.raises(CheckpointFormatError, match=r"beyond\.pth: .*'data/0'.*reaches element 4 .* has 4"):
        read_torch_pickle(path)


@pytest.fixture(scope="module")
def zeros_80mib():
    """80 MiB of zeros deflated into a 0.4 MB zip member: beyond the default cap of a file that size."""
    return bytes(80 << 20)


@pytest.mark.parametrize("numel,pattern", [
    (4, r"storage 'data/0' declares 83886080 bytes, expected 4 x 4"),  # the pickle needs far less
    (20 << 20, r"zip member 'archive/data/0': 83,886,080 bytes would exceed the reader's cap"),  # honest, too big
])
def test_deflate_bomb_is_refused_before_inflating(tmp_path, zeros_80mib, numel, pattern):
    path = tmp_path / "bomb.pth"
    _write_tensor_zip(path, _tensor_pickle(numel, 0, (numel,), (1,)), zeros_80mib, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    assert_refused(functools.partial(read_torch_pickle, path), CheckpointFormatError, rf"bomb\.pth: {pattern}",
                   len(zeros_80mib))


def _declare_size(path, member, size):
    """Rewrites the uncompressed size that the zip's local and central headers declare for `member`."""
    data = bytearray(path.read_bytes())
    found = [m.start() for m in re.finditer(re.escape(member.encode()), data)]
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        header = next(i - name_at for i in found if data.startswith(signature, i - name_at))  # the member's header
        data[header + size_at:header + size_at + 4] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def test_deflated_member_larger_than_declared_is_not_inflated(tmp_path, zeros_80mib):
    """A member declaring 16 bytes that inflates to 80 MiB: the read stops at 16 bytes and the CRC fails."""
    path = tmp_path / "liar.pth"
    _write_tensor_zip(path, _tensor_pickle(4, 0, (4,), (1,)), zeros_80mib, zipfile.ZIP_DEFLATED)
    _declare_size(path, "archive/data/0", 16)
    assert_refused(functools.partial(read_torch_pickle, path), CheckpointFormatError,
                   r"liar\.pth: damaged zip archive: Bad CRC-32 for file 'archive/data/0'", len(zeros_80mib))


def test_member_compressed_with_unbounded_method_is_refused(tmp_path):
    path = tmp_path / "bzip2.pth"
    _write_tensor_zip(path, _tensor_pickle(4, 0, (4,), (1,)), bytes(16), zipfile.ZIP_BZIP2)
    with pytest.raises(CheckpointFormatError, match=r"bzip2\.pth: zip member 'archive/data/0' uses compression "
                                                    r"method 12"):
        read_torch_pickle(path)


def test_max_bytes_caps_what_is_read():
    """The cap counts storages read and tensors copied; the fixtures read with the default, not with a tiny cap."""
    read_torch_pickle(FIXTURES / "plain.pth")
    with pytest.raises(CheckpointFormatError, match=r"plain\.pth: .* exceed the reader's cap of 1,000 bytes"):
        read_torch_pickle(FIXTURES / "plain.pth", max_bytes=1000)
    with pytest.raises(CheckpointFormatError, match=r"weights\.safetensors: \d+ tensors: .* cap of 10 bytes"):
        load_state_dict(FIXTURES / "weights.safetensors", max_bytes=10)


def test_pickle_opcode_declaring_gigabytes_is_refused(tmp_path):
    """BINBYTES8 with a 1 GiB length and 3 bytes behind it: the C unpickler would allocate the 1 GiB first."""
    path = tmp_path / "opcode.pth"
    _write_tensor_zip(path, b"\x80\x04\x8e" + struct.pack("<Q", 1 << 30) + b"abc")
    assert_refused(functools.partial(read_torch_pickle, path), CheckpointFormatError,
                   r"opcode\.pth: data\.pkl is damaged: expected 1073741824 bytes", 1 << 30)


def test_damaged_zip_is_one_error(tmp_path):
    path = tmp_path / "crc.pth"
    _write_tensor_zip(path, _tensor_pickle(4, 0, (4,), (1,)), np.arange(4, dtype="<f4").tobytes())
    data = bytearray(path.read_bytes())
    data[data.index(np.arange(4, dtype="<f4").tobytes()) + 5] ^= 0xFF  # one flipped bit of tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match=r"crc\.pth: damaged zip archive: Bad CRC-32"):
        read_torch_pickle(path)


def test_reader_errors_are_input_errors():
    assert issubclass(CheckpointFormatError, InputError)
    assert issubclass(UnsafeCheckpointError, InputError) and issubclass(UnsafeCheckpointError, pickle.UnpicklingError)


def _write_safetensors(path, header, data=b""):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_deeply_nested_safetensors_header(tmp_path):
    path = tmp_path / "deep.safetensors"
    _write_safetensors(path, b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert_refused(functools.partial(read_safetensors, path), CheckpointFormatError,
                   r"deep\.safetensors: header is nested too deeply", 1 << 30)


def test_deeply_nested_shard_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors\.index\.json is nested too deeply"):
        load_state_dict(tmp_path)


def test_safetensors_header_larger_than_the_format_allows(tmp_path):
    """A sparse 200 MB file whose header claims 150 MB: refused before the header is read."""
    path = tmp_path / "huge_header.safetensors"
    with open(path, "wb") as f:
        f.write((150 << 20).to_bytes(8, "little"))
        f.truncate(200 << 20)
    assert_refused(functools.partial(read_safetensors, path), CheckpointFormatError,
                   r"huge_header\.safetensors: header claims 157,286,400 bytes, more than", 150 << 20)


def test_safetensors_shape_whose_element_count_overflows(tmp_path):
    """2**32 x 2**32 elements wrap to 0 in int64; with Python ints the shape needs 2**66 bytes, not 0."""
    path = tmp_path / "overflow.safetensors"
    _write_safetensors(path, {"big": {"dtype": "F32", "shape": [2 ** 32, 2 ** 32], "data_offsets": [0, 0]}})
    assert_refused(functools.partial(read_safetensors, path), CheckpointFormatError,
                   rf"overflow\.safetensors: tensor 'big': .* span 0 bytes .* needs {2 ** 66}", 1 << 30)


def test_safetensors_tensors_sharing_bytes(tmp_path):
    """1000 tensors over the same 64 KiB would yield 64 MB from a 64 KiB file; the format forbids overlaps."""
    path = tmp_path / "shared.safetensors"
    header = {f"t{i}": {"dtype": "F32", "shape": [16384], "data_offsets": [0, 65536]} for i in range(1000)}
    _write_safetensors(path, header, bytes(65536))
    assert_refused(functools.partial(read_safetensors, path), CheckpointFormatError,
                   r"shared\.safetensors: tensors 't\d+' and 't\d+' overlap", 1000 * 65536)
