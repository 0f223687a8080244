"""Read PyTorch and safetensors checkpoints into numpy arrays without importing torch.

Supported inputs:

* ``.safetensors``: parsed directly (8-byte little-endian header length, JSON header, raw
  little-endian tensor bytes); every shape and offset is validated against the file, and tensors
  may not overlap, before anything is read.
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

Bounded memory on hostile files
-------------------------------
A few hundred bytes can declare gigabytes (a stride-0 view, a deflated zip member of zeros, a
pickle opcode with a huge length), so every declared size is checked before anything is allocated
or inflated: the opcodes of ``data.pkl`` are scanned before unpickling, a zip member's declared
size must match what its storage needs and is read with that bound, views must lie inside their
storage and must not overlap themselves (upstream checkpoints hold no expanded tensors; re-save one
with ``.contiguous()``), and all bytes a reader allocates for one file (zip members read and
tensors copied) are charged to a cap, ``max_bytes``. Its default, 4 x the file size + 64 MiB,
covers every storage read once and every tensor copied from it with room for tied weights; only a
re-zipped (deflated) archive can need more, and then ``max_bytes`` must be passed explicitly.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import functools
import io
import json
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import ml_dtypes
import numpy as np

from fast3r_jax.errors import InputError


class CheckpointFormatError(InputError):
    """A checkpoint file is malformed, truncated, has an unexpected layout or declares more data than allowed."""


class UnsafeCheckpointError(InputError, pickle.UnpicklingError):
    """A pickled checkpoint names a global that is not on the allow-list."""


# Default cap on the bytes read for one file: 4 x its size + 64 MiB (see the module docstring).
_DEFAULT_CAP_PER_FILE_BYTE = 4
_DEFAULT_CAP_SLACK = 64 << 20
# The safetensors library's own bound on the JSON header; also applied to a shard index.
_MAX_HEADER_BYTES = 100 << 20


class _Budget:
    """The bytes a reader may still allocate for one file; `take` refuses before the allocation happens."""

    def __init__(self, max_bytes: int | None, file_size: int):
        self.cap = _DEFAULT_CAP_PER_FILE_BYTE * file_size + _DEFAULT_CAP_SLACK if max_bytes is None else max_bytes
        self.left = self.cap

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise CheckpointFormatError(
                f"{what}: {nbytes:,} bytes would exceed the reader's cap of {self.cap:,} bytes for this file "
                f"({self.left:,} left); pass max_bytes to read a larger checkpoint")
        self.left -= nbytes


def _parse_json(text: bytes, where: str) -> Any:
    """json.loads that reports bad or absurdly nested JSON as a CheckpointFormatError naming `where`."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{where} is not valid JSON: {e}") from None
    except RecursionError:
        raise CheckpointFormatError(f"{where} is nested too deeply to be a checkpoint header") from None


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


class _Entry(NamedTuple):
    """One validated safetensors header entry; `begin`/`end` are offsets into the data section."""
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def read_safetensors(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Reads every tensor of a .safetensors file (the `__metadata__` entry is ignored).

    The whole header is validated (shapes, offsets inside the file, no two tensors sharing bytes) and the total is
    charged to `max_bytes` (default: see the module docstring) before any tensor is allocated.
    """
    path = Path(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size < 8:
            raise CheckpointFormatError(f"{path}: {file_size} bytes, too short for a safetensors header")
        header_size = int.from_bytes(f.read(8), "little")
        if header_size > file_size - 8:
            raise CheckpointFormatError(
                f"{path}: header claims {header_size} bytes but the file has {file_size} (truncated?)")
        if header_size > _MAX_HEADER_BYTES:
            raise CheckpointFormatError(
                f"{path}: header claims {header_size:,} bytes, more than the {_MAX_HEADER_BYTES:,} a safetensors "
                "header may have")
        header = _parse_json(f.read(header_size), f"{path}: header")
        if not isinstance(header, dict):
            raise CheckpointFormatError(f"{path}: header is not a JSON object")
        header.pop("__metadata__", None)
        data_start = 8 + header_size
        entries = [_safetensors_entry(path, name, entry, file_size - data_start) for name, entry in header.items()]
        _check_disjoint(path, entries)
        _Budget(max_bytes, file_size).take(sum(e.end - e.begin for e in entries), f"{path}: {len(entries)} tensors")
        return {e.name: _read_entry(f, path, e, data_start) for e in entries}


def _safetensors_entry(path: Path, name: str, entry: Any, data_size: int) -> _Entry:
    """Validates one header entry against the data section, with exact (Python int) sizes."""
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
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CheckpointFormatError(
            f"{where}: data_offsets {offsets} span {end - begin} bytes but shape {shape} of "
            f"{entry['dtype']} needs {expected}")
    if end > data_size:
        raise CheckpointFormatError(
            f"{where}: data ends at byte {end} but the data section has {data_size} bytes (truncated?)")
    return _Entry(name, dtype, tuple(shape), begin, end)


def _check_disjoint(path: Path, entries: list[_Entry]) -> None:
    """Refuses tensors that share bytes: the format forbids it, and it would multiply what a small file yields."""
    reach, owner = 0, ""
    for e in sorted((e for e in entries if e.end > e.begin), key=lambda e: e.begin):
        if e.begin < reach:
            raise CheckpointFormatError(f"{path}: tensors {owner!r} and {e.name!r} overlap in the data section")
        reach, owner = e.end, e.name


def _read_entry(f: io.BufferedReader, path: Path, e: _Entry, data_start: int) -> np.ndarray:
    raw = np.empty(e.end - e.begin, np.uint8)
    f.seek(data_start + e.begin)
    f.readinto(memoryview(raw))
    try:
        return _decode(raw, e.dtype, little_endian=True).reshape(e.shape)
    except ValueError as err:  # e.g. more dimensions than numpy supports
        raise CheckpointFormatError(f"{path}: tensor {e.name!r}: {err}") from None


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
    budget: _Budget  # charged for every tensor copied out of this storage


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
    """Copies the view `storage[offset + sum(i_k * stride_k)]` of shape `size` into a new array.

    The view must lie inside the storage and must not reach one element twice, so the copy is never larger than
    the storage; it is charged to the storage's budget before it is allocated.
    """
    where = f"tensor in storage 'data/{storage.key}'"
    if metadata:
        raise CheckpointFormatError(f"{where}: lazy conj/neg views are not supported ({metadata!r})")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and _is_index(offset)
            and all(map(_is_index, size)) and all(map(_is_index, stride)) and len(size) == len(stride)):
        raise CheckpointFormatError(f"{where}: bad offset {offset!r}, size {size!r}, stride {stride!r}")
    size, stride = tuple(size), tuple(stride)
    if storage.raw.size % dtype.itemsize:
        raise CheckpointFormatError(f"{where}: {storage.raw.size} bytes are not whole {dtype} elements")
    numel = storage.raw.size // dtype.itemsize
    view = f"view (offset {offset}, size {size}, stride {stride})"
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))  # the furthest element a non-empty view reaches
    if offset > numel or (0 not in size and last >= numel):
        raise CheckpointFormatError(f"{where}: {view} reaches element {last} but the storage has {numel}")
    if 0 not in size and _self_overlapping(size, stride):
        raise CheckpointFormatError(
            f"{where}: {view} reaches some elements more than once (an expanded or as_strided tensor); "
            "re-save it with .contiguous()")
    storage.budget.take(math.prod(size) * dtype.itemsize, f"{where}: {view} of {dtype}")
    elements = _decode(storage.raw, dtype, storage.little_endian)  # (numel,)
    try:
        strided = np.lib.stride_tricks.as_strided(
            elements[offset:], shape=size, strides=[s * dtype.itemsize for s in stride], writeable=False)
    except ValueError as e:  # e.g. more dimensions than numpy supports
        raise CheckpointFormatError(f"{where}: {view}: {e}") from None
    return strided.copy()


def _self_overlapping(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether two indices may reach one element: the sufficient test of disjointness that every slice, transpose
    and permutation of a contiguous tensor passes (each stride exceeds the reach of the smaller ones)."""
    reach = 0  # furthest offset reachable through the dimensions with smaller strides
    for s, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):
        if s <= reach:
            return True
        reach += (n - 1) * s
    return False


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


def _archive_prefix(zf: zipfile.ZipFile) -> str:
    """The top-level folder of a torch.save archive (e.g. 'archive/')."""
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointFormatError(
            "zip file without a single '<archive>/data.pkl'; not a torch.save checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "constants.pkl" in names:
        raise CheckpointFormatError(
            "TorchScript archive; save the weights with torch.save(model.state_dict(), ...)")
    return prefix


def _member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    try:
        return zf.getinfo(name)
    except KeyError:
        return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, archive_size: int) -> bytes:
    """Reads one zip member after checking its declared sizes against the archive and the budget; the read stops at
    the declared size, so a deflated member that inflates further is never inflated past it (and then fails its
    CRC)."""
    name = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # bzip2/lzma reads are not bounded
        raise CheckpointFormatError(
            f"zip member {name!r} uses compression method {info.compress_type}; torch.save stores members "
            "uncompressed (deflate is accepted too)")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise CheckpointFormatError(
            f"zip member {name!r} is stored uncompressed but declares {info.compress_size} bytes stored and "
            f"{info.file_size} bytes of data")
    if info.header_offset + info.compress_size > archive_size:
        raise CheckpointFormatError(
            f"zip member {name!r} declares {info.compress_size} bytes at offset {info.header_offset}, past the end "
            f"of the {archive_size}-byte file (truncated?)")
    budget.take(info.file_size, f"zip member {name!r}")
    with zf.open(info) as member:
        data = member.read(info.file_size)
    if len(data) != info.file_size:
        raise CheckpointFormatError(f"zip member {name!r} holds {len(data)} of its {info.file_size} bytes")
    return data


def _little_endian(zf: zipfile.ZipFile, prefix: str, budget: _Budget, archive_size: int) -> bool:
    """Byte order of the storages; archives without a `byteorder` record are little-endian."""
    info = _member(zf, prefix + "byteorder")
    if info is None:
        return True
    order = _read_member(zf, info, budget, archive_size) if info.file_size <= len(b"little") else b""
    if order not in (b"little", b"big"):
        raise CheckpointFormatError(f"byteorder record of {info.file_size} bytes is neither 'little' nor 'big'")
    return order == b"little"


def _check_opcodes(data: bytes) -> None:
    """Walks the pickle's opcodes without building anything: the C unpickler allocates the length an opcode
    declares (up to 2**64 bytes for BINBYTES8) before it finds that the data is not there."""
    try:
        for _ in pickletools.genops(data):
            pass
    except ValueError as e:
        raise CheckpointFormatError(f"data.pkl is damaged: {e}") from None


def read_torch_pickle(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """Loads a zip-format `torch.save` file; returns its top-level object with tensors as arrays.

    Containers are preserved; tensors sharing a storage become independent arrays with equal
    contents. Non-tensor objects follow the policy in the module docstring. At most `max_bytes` are
    read and copied in all (default: 4 x the file size + 64 MiB), every size checked before it is allocated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no torch checkpoint file at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path}: not a zip-format torch.save file (the legacy torch.save format is not "
            "supported: re-save it with a modern torch, e.g. torch.save(torch.load(p), p))")
    archive_size = path.stat().st_size
    budget = _Budget(max_bytes, archive_size)
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _archive_prefix(zf)
            little_endian = _little_endian(zf, prefix, budget, archive_size)
            pickled = _read_member(zf, zf.getinfo(prefix + "data.pkl"), budget, archive_size)
            _check_opcodes(pickled)
            storages: dict[str, _Storage] = {}

            def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
                if key not in storages:
                    info = _member(zf, f"{prefix}data/{key}")
                    if info is None:
                        raise CheckpointFormatError(f"storage record 'data/{key}' is missing")
                    itemsize = 1 if storage_type.dtype is None else storage_type.dtype.itemsize
                    if info.file_size != numel * itemsize:
                        raise CheckpointFormatError(
                            f"storage 'data/{key}' declares {info.file_size} bytes, expected {numel} x {itemsize}")
                    raw = np.frombuffer(_read_member(zf, info, budget, archive_size), np.uint8)  # (nbytes,)
                    storages[key] = _Storage(key, raw, storage_type.dtype, little_endian, budget)
                return storages[key]

            return _RestrictedUnpickler(io.BytesIO(pickled), load_storage).load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except CheckpointFormatError as e:
        raise CheckpointFormatError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, EOFError, NotImplementedError) as e:  # damaged archive, unsupported compression
        raise CheckpointFormatError(f"{path}: damaged zip archive: {e}") from None
    except OSError:  # An unreadable file is not a malformed one.
        raise
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


def load_state_dict(path: str | os.PathLike, max_bytes: int | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Loads a model state dict from any supported checkpoint; returns (state_dict, layout).

    `max_bytes` caps what is read from each file (default: see the module docstring).

    layout is "dust3r" whenever the keys use DUSt3R naming (top-level `patch_embed.`,
    `enc_blocks.`, `dec_blocks2.`, `downstream_head1.` and no `encoder.`/`decoder.`), whatever the
    container. Otherwise the keys use Fast3R naming and layout names the container:
    "huggingface" (snapshot folder), "safetensors" (file), "lightning" (`state_dict` with `net.`
    keys; the prefix is stripped, the upstream bookkeeping buffers are dropped, and any other key
    raises), or "torch" (a `torch.save` dict at top level or under `model` / `state_dict`).
    """
    path = Path(path)
    if path.is_dir():
        state, layout = _read_snapshot(path, max_bytes), "huggingface"
    elif path.is_file() and path.suffix == ".safetensors":
        state, layout = read_safetensors(path, max_bytes), "safetensors"
    elif path.is_file() and path.suffix in _TORCH_SUFFIXES:
        state, layout = _unwrap_torch(read_torch_pickle(path, max_bytes), path)
    elif path.is_file():
        raise CheckpointFormatError(
            f"{path}: unknown checkpoint suffix; expected .safetensors or one of {_TORCH_SUFFIXES}")
    else:
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a .safetensors / {'/'.join(_TORCH_SUFFIXES)} file or a "
            f"Hugging Face snapshot folder holding one of {_SNAPSHOT_FILES}")
    _check_state_dict(state, path)
    return state, "dust3r" if _is_dust3r(state) else layout


def _read_snapshot(folder: Path, max_bytes: int | None) -> dict[str, np.ndarray]:
    """Reads the weights of a Hugging Face snapshot folder (single-file or sharded)."""
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors", max_bytes)
    if (folder / "model.safetensors.index.json").is_file():
        return _read_sharded(folder / "model.safetensors.index.json", max_bytes)
    if (folder / "pytorch_model.bin").is_file():
        state, _ = _unwrap_torch(read_torch_pickle(folder / "pytorch_model.bin", max_bytes), folder)
        return state
    raise FileNotFoundError(
        f"{folder}: no weights found; looked for {', '.join(_SNAPSHOT_FILES)}")


def _read_sharded(index_path: Path, max_bytes: int | None) -> dict[str, np.ndarray]:
    """Reads the shards named by a safetensors index, in index order."""
    if index_path.stat().st_size > _MAX_HEADER_BYTES:
        raise CheckpointFormatError(f"{index_path}: larger than the {_MAX_HEADER_BYTES:,} bytes an index may have")
    index = _parse_json(index_path.read_bytes(), str(index_path))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointFormatError(f"{index_path}: needs a 'weight_map' of key -> shard file name")
    shards = {}
    for shard in dict.fromkeys(weight_map.values()):
        if Path(shard).name != shard:
            raise CheckpointFormatError(f"{index_path}: shard {shard!r} is not a plain file name")
        if not (index_path.parent / shard).is_file():
            raise FileNotFoundError(f"{index_path}: shard {shard!r} is missing")
        shards[shard] = read_safetensors(index_path.parent / shard, max_bytes)
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
