"""Read PyTorch and safetensors checkpoints into numpy arrays without importing torch.

Supported inputs:

* ``.safetensors``: parsed directly (8-byte little-endian header length, JSON header, raw
  little-endian tensor bytes); every offset is validated against the file.
* ``torch.save`` zip archives (``.pth``, ``.pt``, ``.bin``, ``.ckpt``): ``<archive>/data.pkl`` is
  unpickled with a restricted unpickler and tensors are rebuilt from the raw storages in
  ``<archive>/data/<key>``. The legacy (pre zip) ``torch.save`` format and TorchScript archives are
  rejected with a message saying how to re-save them.
* Hugging Face snapshot folders (``model.safetensors``, sharded ``model.safetensors.index.json`` or
  ``pytorch_model.bin``).

Safety policy for pickled checkpoints
-------------------------------------
Unpickling runs whatever callables the pickle names, so ``find_class`` resolves names from three
explicit lists and refuses everything else with :class:`UnsafeCheckpointError` (naming the refused
``module.name``); no module is ever imported:

1. Rebuilt by this module: the tensor and parameter rebuild functions of ``torch._utils`` (replaced
   by numpy implementations here), the ``torch.<Type>Storage`` / ``torch.storage.UntypedStorage``
   classes and ``torch.<dtype>`` objects (replaced by markers), ``torch.Size`` (as ``tuple``) and
   ``_codecs.encode`` (latin-1 only, which is how protocol-2 pickles store ``bytes``).
2. Harmless builtins and containers: ``collections.OrderedDict``, ``set``, ``frozenset`` and the
   ``dict``/``list``/``tuple``/``int``/``float``/``str``/``bool`` types.
3. Inert types, rebuilt as :class:`InertObject` stubs that only record the constructor arguments and
   pickled state and never call the real class: ``argparse.Namespace`` (DUSt3R ``args``),
   ``pathlib`` paths, ``torch.torch_version.TorchVersion``, ``torch.device``, ``functools.partial``
   and ``typing.Any``, plus every name under ``omegaconf``, ``torch.optim`` and
   ``pl_bolts.optimizers``: Lightning ``hyper_parameters`` hold Hydra partials of optimizer and
   scheduler classes and OmegaConf containers.

Anything else (``os.system``, ``builtins.eval``, ``builtins.getattr``, arbitrary classes) is refused,
even when it sits far from the tensors: a stub could only be justified for names known to be inert.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import functools
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import ml_dtypes
import numpy as np


class CheckpointFormatError(ValueError):
    """A checkpoint file is malformed, truncated or has an unexpected layout."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A pickled checkpoint names a global that is not on the allow-list."""


# torch dtype name -> numpy dtype (only dtypes with an exact numpy counterpart).
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint64": np.dtype(np.uint64),
    "uint32": np.dtype(np.uint32),
    "uint16": np.dtype(np.uint16),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}

# Legacy typed-storage class name (as torch.save pickles it) -> torch dtype name.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

# safetensors dtype code -> torch dtype name.
_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def _decode(raw: np.ndarray, dtype: np.dtype, little_endian: bool) -> np.ndarray:
    """Reinterprets a flat uint8 buffer as `dtype` elements stored in the given byte order."""
    width = dtype.itemsize
    stored = raw.view(np.dtype(f"{'<' if little_endian else '>'}u{width}"))  # (n,)
    return stored.astype(np.dtype(f"=u{width}"), copy=False).view(dtype)  # (n,)


# ----------------------------------------------------------------------------- safetensors


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of a .safetensors file (the `__metadata__` entry is ignored)."""
    path = Path(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size < 8:
            raise CheckpointFormatError(f"{path}: {file_size} bytes, too short for a safetensors header")
        header_size = int.from_bytes(f.read(8), "little")
        data_start = 8 + header_size
        if data_start > file_size:
            raise CheckpointFormatError(
                f"{path}: header claims {header_size} bytes but the file has {file_size} (truncated?)")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointFormatError(f"{path}: header is not valid JSON: {e}") from e
        if not isinstance(header, dict):
            raise CheckpointFormatError(f"{path}: header is not a JSON object")
        header.pop("__metadata__", None)
        return {
            name: _read_safetensors_entry(f, path, name, entry, data_start, file_size - data_start)
            for name, entry in header.items()
        }


def _read_safetensors_entry(f: io.BufferedReader, path: Path, name: str, entry: Any,
                            data_start: int, data_size: int) -> np.ndarray:
    """Validates one header entry and reads its bytes."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointFormatError(f"{where}: header entry needs dtype, shape and data_offsets")
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise CheckpointFormatError(
            f"{where}: unsupported dtype {entry['dtype']!r}; supported: {sorted(_SAFETENSORS_DTYPES)}")
    dtype = _NUMPY_DTYPES[_SAFETENSORS_DTYPES[entry["dtype"]]]
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(_is_index(d) for d in shape)):
        raise CheckpointFormatError(f"{where}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(o) for o in offsets)):
        raise CheckpointFormatError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != expected:
        raise CheckpointFormatError(
            f"{where}: data_offsets {offsets} span {end - begin} bytes but shape {shape} of "
            f"{entry['dtype']} needs {expected}")
    if end > data_size:
        raise CheckpointFormatError(
            f"{where}: data ends at byte {end} but the data section has {data_size} bytes (truncated?)")
    raw = np.empty(expected, np.uint8)
    f.seek(data_start + begin)
    f.readinto(memoryview(raw))
    return _decode(raw, dtype, little_endian=True).reshape(shape)


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


# ----------------------------------------------------------------------------- torch pickle


class InertObject:
    """Stand-in for an allow-listed non-tensor object: records what the pickle said, runs nothing.

    `qualname` is the pickled `module.name`; `args` the constructor arguments; `state` the pickled
    state (e.g. the attribute dict of an `argparse.Namespace`), or None.
    """

    qualname: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs  # Recorded by __new__.

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"InertObject({self.qualname}, args={self.args!r}, state={self.state!r})"


@functools.cache
def _inert_class(qualname: str) -> type[InertObject]:
    """One stub class per pickled name (NEWOBJ needs a class, and isinstance checks stay easy)."""
    return type(qualname, (InertObject,), {"qualname": qualname, "__qualname__": f"InertObject[{qualname}]"})


_INERT_NAMES = frozenset({
    "argparse.Namespace",
    "pathlib.Path",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "torch.torch_version.TorchVersion",
    "torch.device",
    "functools.partial",
    "typing.Any",
})
_INERT_PACKAGES = ("omegaconf", "torch.optim", "pl_bolts.optimizers")


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Marker for a pickled storage class; dtype None means untyped (raw bytes)."""
    name: str
    dtype: np.dtype | None


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
    """Marker for a pickled `torch.<dtype>` object."""
    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    """The raw bytes of one `data/<key>` record and the element type it was saved with."""
    key: str
    raw: np.ndarray  # (nbytes,) uint8, read-only
    dtype: np.dtype | None
    little_endian: bool


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], requires_grad: bool = False,
                       backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    del requires_grad, backward_hooks  # Autograd state has no meaning for arrays.
    if not isinstance(storage, _Storage) or storage.dtype is None:
        raise CheckpointFormatError(f"_rebuild_tensor_v2 needs a typed storage, got {storage!r}")
    return _strided_copy(storage, storage.dtype, storage_offset, size, stride, metadata)


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...]) -> np.ndarray:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: _Storage, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], requires_grad: bool, backward_hooks: Any,
                       dtype: _TorchDtype, metadata: Any = None) -> np.ndarray:
    """Newer dtypes (e.g. uint16) are saved as untyped bytes plus an explicit dtype."""
    del requires_grad, backward_hooks
    if not isinstance(storage, _Storage) or not isinstance(dtype, _TorchDtype):
        raise CheckpointFormatError(f"_rebuild_tensor_v3 got storage {storage!r}, dtype {dtype!r}")
    return _strided_copy(storage, dtype.dtype, storage_offset, size, stride, metadata)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool, backward_hooks: Any,
                       state: Any = None) -> np.ndarray:
    del requires_grad, backward_hooks, state
    if not isinstance(data, np.ndarray):
        raise CheckpointFormatError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


def _strided_copy(storage: _Storage, dtype: np.dtype, offset: int, size: tuple[int, ...],
                  stride: tuple[int, ...], metadata: Any) -> np.ndarray:
    """Copies the view `storage[offset + sum(i_k * stride_k)]` of shape `size` into a new array."""
    where = f"tensor in storage {storage.key!r}"
    if metadata:
        raise CheckpointFormatError(f"{where}: lazy conj/neg views are not supported ({metadata!r})")
    size, stride = tuple(size), tuple(stride)
    if not (_is_index(offset) and all(map(_is_index, size)) and all(map(_is_index, stride))
            and len(size) == len(stride)):
        raise CheckpointFormatError(f"{where}: bad offset {offset!r}, size {size!r}, stride {stride!r}")
    if storage.raw.size % dtype.itemsize:
        raise CheckpointFormatError(f"{where}: {storage.raw.size} bytes are not whole {dtype} elements")
    elements = _decode(storage.raw, dtype, storage.little_endian)  # (n,)
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= elements.size:
            raise CheckpointFormatError(
                f"{where}: view (offset {offset}, size {size}, stride {stride}) reaches element {last} "
                f"but the storage has {elements.size}")
    view = np.lib.stride_tricks.as_strided(
        elements[offset:], shape=size, strides=[s * dtype.itemsize for s in stride], writeable=False)
    return view.copy()


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for `bytes` objects, and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointFormatError(f"_codecs.encode is only allowed as (str, 'latin1'), got {encoding!r}")
    return text.encode("latin1")


_CALLABLES: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.Size": tuple,
    "_codecs.encode": _encode_latin1,
    "collections.OrderedDict": collections.OrderedDict,
    **{f"builtins.{t.__name__}": t
       for t in (set, frozenset, dict, list, tuple, int, float, str, bool)},
}


def _resolve_global(module: str, name: str) -> Any:
    """The allow-list behind `find_class` (see the module docstring)."""
    # Protocol-2 pickles name some globals by their Python 2 spelling (e.g. `__builtin__.set`).
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    qualname = f"{module}.{name}"
    if qualname in _CALLABLES:
        return _CALLABLES[qualname]
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(name, _NUMPY_DTYPES[_STORAGE_DTYPES[name]])
    if qualname == "torch.storage.UntypedStorage":
        return _StorageType(name, None)
    if module == "torch" and name in _NUMPY_DTYPES:
        return _TorchDtype(name, _NUMPY_DTYPES[name])
    if qualname in _INERT_NAMES or any(module == p or module.startswith(p + ".")
                                       for p in _INERT_PACKAGES):
        return _inert_class(qualname)
    raise UnsafeCheckpointError(
        f"refusing to unpickle global {qualname!r}: it is not on the allow-list of tensor rebuild "
        f"functions, plain containers and inert types (see {__name__})")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come from `_resolve_global` and storages from the zip archive."""

    def __init__(self, file: io.BytesIO, load_storage: Callable[[_StorageType, str, int], _Storage]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        return _resolve_global(module, name)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_index(pid[4])):
            raise CheckpointFormatError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        return self._load_storage(storage_type, key, numel)


def _archive_prefix(zf: zipfile.ZipFile, path: Path) -> str:
    """The top-level folder of a torch.save archive (e.g. 'archive/')."""
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointFormatError(
            f"{path}: zip file without a single '<archive>/data.pkl'; not a torch.save checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "constants.pkl" in names:
        raise CheckpointFormatError(
            f"{path}: TorchScript archive; save the weights with torch.save(model.state_dict(), ...)")
    return prefix


def _little_endian(zf: zipfile.ZipFile, prefix: str, path: Path) -> bool:
    """Byte order of the storages; archives without a `byteorder` record are little-endian."""
    try:
        order = zf.read(prefix + "byteorder")
    except KeyError:
        return True
    if order not in (b"little", b"big"):
        raise CheckpointFormatError(f"{path}: unknown byteorder record {order!r}")
    return order == b"little"


def read_torch_pickle(path: str | os.PathLike) -> Any:
    """Loads a zip-format `torch.save` file; returns its top-level object with tensors as arrays.

    Containers are preserved; tensors sharing a storage become independent arrays with equal
    contents. Non-tensor objects follow the policy in the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no torch checkpoint file at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path}: not a zip-format torch.save file (the legacy torch.save format is not "
            "supported: re-save it with a modern torch, e.g. torch.save(torch.load(p), p))")
    with zipfile.ZipFile(path) as zf:
        prefix = _archive_prefix(zf, path)
        little_endian = _little_endian(zf, prefix, path)
        storages: dict[str, _Storage] = {}

        def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
            if key not in storages:
                try:
                    raw = np.frombuffer(zf.read(f"{prefix}data/{key}"), np.uint8)  # (nbytes,)
                except KeyError:
                    raise CheckpointFormatError(f"{path}: storage record 'data/{key}' is missing") from None
                itemsize = 1 if storage_type.dtype is None else storage_type.dtype.itemsize
                if raw.size != numel * itemsize:
                    raise CheckpointFormatError(
                        f"{path}: storage 'data/{key}' has {raw.size} bytes, expected {numel} x {itemsize}")
                storages[key] = _Storage(key, raw, storage_type.dtype, little_endian)
            return storages[key]

        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(prefix + "data.pkl")), load_storage)
        try:
            return unpickler.load()
        except UnsafeCheckpointError as e:
            raise UnsafeCheckpointError(f"{path}: {e}") from None
        except CheckpointFormatError as e:
            raise CheckpointFormatError(f"{path}: {e}") from None
        except Exception as e:  # Any other failure means a malformed or unsupported pickle.
            raise CheckpointFormatError(f"{path}: cannot unpickle data.pkl: {e!r}") from e


# ----------------------------------------------------------------------------- state dicts

_SNAPSHOT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# LightningModule buffers of the upstream training module that are not part of the network.
_LIGHTNING_BOOKKEEPING = frozenset({"epoch_fraction", "train_total_samples", "train_total_images"})
# `net._orig_mod.` appears when the network was wrapped by torch.compile before saving.
_LIGHTNING_PREFIXES = ("net._orig_mod.", "net.")
_DUST3R_PREFIXES = ("patch_embed.", "enc_blocks.", "dec_blocks2.", "downstream_head1.")
_FAST3R_PREFIXES = ("encoder.", "decoder.")


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """Loads a model state dict from any supported checkpoint; returns (state_dict, layout).

    layout is "dust3r" whenever the keys use DUSt3R naming (top-level `patch_embed.`,
    `enc_blocks.`, `dec_blocks2.`, `downstream_head1.` and no `encoder.`/`decoder.`), whatever the
    container. Otherwise the keys use Fast3R naming and layout names the container:
    "huggingface" (snapshot folder), "safetensors" (file), "lightning" (`state_dict` with `net.`
    keys; the prefix is stripped, the upstream bookkeeping buffers are dropped, and any other key
    raises), or "torch" (a `torch.save` dict at top level or under `model` / `state_dict`).
    """
    path = Path(path)
    if path.is_dir():
        state, layout = _read_snapshot(path), "huggingface"
    elif path.is_file() and path.suffix == ".safetensors":
        state, layout = read_safetensors(path), "safetensors"
    elif path.is_file() and path.suffix in _TORCH_SUFFIXES:
        state, layout = _unwrap_torch(read_torch_pickle(path), path)
    elif path.is_file():
        raise CheckpointFormatError(
            f"{path}: unknown checkpoint suffix; expected .safetensors or one of {_TORCH_SUFFIXES}")
    else:
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a .safetensors / {'/'.join(_TORCH_SUFFIXES)} file or a "
            f"Hugging Face snapshot folder holding one of {_SNAPSHOT_FILES}")
    _check_state_dict(state, path)
    return state, "dust3r" if _is_dust3r(state) else layout


def _read_snapshot(folder: Path) -> dict[str, np.ndarray]:
    """Reads the weights of a Hugging Face snapshot folder (single-file or sharded)."""
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")
    if (folder / "model.safetensors.index.json").is_file():
        return _read_sharded(folder / "model.safetensors.index.json")
    if (folder / "pytorch_model.bin").is_file():
        state, _ = _unwrap_torch(read_torch_pickle(folder / "pytorch_model.bin"), folder)
        return state
    raise FileNotFoundError(
        f"{folder}: no weights found; looked for {', '.join(_SNAPSHOT_FILES)}")


def _read_sharded(index_path: Path) -> dict[str, np.ndarray]:
    """Reads the shards named by a safetensors index, in index order."""
    weight_map = json.loads(index_path.read_text()).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointFormatError(f"{index_path}: needs a 'weight_map' of key -> shard file name")
    shards = {}
    for shard in dict.fromkeys(weight_map.values()):
        if Path(shard).name != shard:
            raise CheckpointFormatError(f"{index_path}: shard {shard!r} is not a plain file name")
        if not (index_path.parent / shard).is_file():
            raise FileNotFoundError(f"{index_path}: shard {shard!r} is missing")
        shards[shard] = read_safetensors(index_path.parent / shard)
    missing = [k for k, shard in weight_map.items() if k not in shards[shard]]
    if missing:
        raise CheckpointFormatError(f"{index_path}: keys absent from their shards: {missing[:10]}")
    return {k: shards[shard][k] for k, shard in weight_map.items()}


def _unwrap_torch(obj: Any, path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Finds the state dict inside a torch.save object; returns it with the container layout."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}, expected a dict")
    inner = obj.get("state_dict")
    if isinstance(inner, Mapping) and any(str(k).startswith("net.") for k in inner):
        return _strip_lightning(inner, path), "lightning"
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return dict(obj[key]), "torch"
    if all(isinstance(v, np.ndarray) for v in obj.values()):
        return dict(obj), "torch"
    raise CheckpointFormatError(
        f"{path}: no state dict found (tensors at top level or under 'model' / 'state_dict'); "
        f"top-level keys: {list(obj)[:20]}")


def _strip_lightning(state: Mapping[str, Any], path: Path) -> dict[str, np.ndarray]:
    """Removes the `net.` prefix of a LightningModule state dict, refusing unknown extra keys."""
    out, unexpected = {}, []
    for key, value in state.items():
        prefix = next((p for p in _LIGHTNING_PREFIXES if isinstance(key, str) and key.startswith(p)), None)
        if prefix is not None:
            out[key[len(prefix):]] = value
        elif key not in _LIGHTNING_BOOKKEEPING:
            unexpected.append(key)
    if unexpected:
        raise CheckpointFormatError(
            f"{path}: Lightning state_dict has keys outside 'net.' that are not known bookkeeping "
            f"buffers {sorted(_LIGHTNING_BOOKKEEPING)}: {unexpected[:20]}")
    return out


def _check_state_dict(state: Mapping[Any, Any], path: Path) -> None:
    bad = [f"{k!r}: {type(v).__name__}" for k, v in state.items()
           if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise CheckpointFormatError(f"{path}: state dict entries that are not named tensors: {bad[:10]}")
    if not state:
        raise CheckpointFormatError(f"{path}: the state dict is empty")


def _is_dust3r(state: Mapping[str, np.ndarray]) -> bool:
    keys = list(state)
    return (any(k.startswith(_DUST3R_PREFIXES) for k in keys)
            and not any(k.startswith(_FAST3R_PREFIXES) for k in keys))
