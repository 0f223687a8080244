"""The persistent compilation cache: compiled programs kept on disk so that a second run skips compilation.

On by default in the user's cache folder (`default_path`); `JAX_COMPILATION_CACHE_DIR` overrides the folder, and
`enable("off")` (the command's `--compilation-cache off`) leaves the cache off. Every program is cached, however small
and however quick to compile, so that CPU runs (many small programs) profit too.

XLA's cache is keyed by the lowered program, so a run still traces and lowers every function to find its entry. Next
to it (under ENTRIES) this module keeps entries of our own, keyed by what determines them (`key`: their inputs plus
this package's source, the library versions, the backend and JAX's configuration), so that a warm run skips the
tracing too: the engine's compiled programs (`save_program` / `load_program`, as serialized executables) and the
parameter tree of a model config (fast3r_jax.model.params). An entry carries a checksum; a missing, damaged or
unreadable one reads as absent (the caller recomputes and rewrites it), and a folder that cannot be written only means
nothing is kept. Like XLA's, entries are never evicted, and loading one runs what it holds: the folder must be as
trusted as the code.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import pathlib
import pickle
import platform
import tempfile
import uuid
from typing import Any

import jax
from jax.experimental import serialize_executable

OFF = "off"
ENV = "JAX_COMPILATION_CACHE_DIR"
ENTRIES = "fast3r-jax"  # subfolder of our own entries
_MAGIC = b"fast3r-jax-entry-1\n"

log = logging.getLogger(__name__)


def default_path() -> pathlib.Path:
    """`$JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/fast3r-jax/xla`, else `~/.cache/fast3r-jax/xla`."""
    if os.environ.get(ENV):
        return pathlib.Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "fast3r-jax" / "xla"


def enable(path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turns the persistent cache on in `path` (None: `default_path()`; "off": leaves it off). Returns the folder in
    use, or None when off or when the folder cannot be created (the run then compiles as without a cache)."""
    if path is not None and os.fspath(path) == OFF:
        return None
    folder = pathlib.Path(path) if path is not None else default_path()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def add_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The commands' `--compilation-cache DIR|off` option (read by `enable(args.compilation_cache)`)."""
    parser.add_argument("--compilation-cache", default=None, metavar="DIR|off",
                        help=f"persistent XLA compilation cache (default: ${ENV} or {default_path()}); 'off' "
                             "disables it")


# ----------------------------------------------------------------------------
# Entries of our own.
# ----------------------------------------------------------------------------


@functools.cache
def _code_digest() -> str:
    """This package's source, the versions of the libraries that trace and compile it, and the host's CPU (XLA:CPU
    compiles for the features of the CPU it runs on)."""
    import flax
    import jaxlib
    import numpy

    digest = hashlib.sha256()
    root = pathlib.Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    digest.update(repr((jax.__version__, jaxlib.__version__, flax.__version__, numpy.__version__,
                        platform.machine(), cpu)).encode())
    return digest.hexdigest()


def key(kind: str, *parts: Any) -> str:
    """The name of an entry of `kind` computed from `parts` (JSON-able, or described by their repr): a digest of them
    and of everything else they are computed with (the code, the backend and its devices, XLA's flags, JAX's global
    configuration), so that an entry is found again only where it would be computed the same."""
    devices = jax.devices()
    backend = devices[0].client
    environment = (_code_digest(), backend.platform, backend.platform_version, [d.device_kind for d in devices],
                   os.environ.get("XLA_FLAGS", ""), sorted(jax.config.values.items()))
    text = json.dumps([kind, environment, parts], sort_keys=True, default=repr)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()}"


def unique_name(name: str) -> str:
    """`name` made unique to this call, for a function about to be compiled and saved: XLA's persistent cache keys
    programs by their name too, so it never holds that one and compiles it (it writes its own copy, never read)."""
    return f"{name}_{uuid.uuid4().hex}"


def read(folder: str | os.PathLike, name: str) -> bytes | None:
    """The payload of entry `name`, or None when it is missing, damaged or unreadable."""
    try:
        data = (pathlib.Path(folder) / ENTRIES / name).read_bytes()
    except OSError:
        return None
    header = len(_MAGIC) + 32
    if data[:len(_MAGIC)] != _MAGIC or hashlib.sha256(data[header:]).digest() != data[len(_MAGIC):header]:
        log.debug("ignoring the damaged cache entry %s", name)
        return None
    return data[header:]


def write(folder: str | os.PathLike, name: str, payload: bytes) -> None:
    """Writes entry `name` atomically (a temporary file renamed into place); a folder that cannot be written is
    skipped (nothing kept)."""
    entries, temporary = pathlib.Path(folder) / ENTRIES, None
    try:
        entries.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=entries, prefix=f".{name}.")
        with os.fdopen(handle, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
        os.replace(temporary, entries / name)
    except OSError as err:
        log.debug("cannot write the cache entry %s: %s", name, err)
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def save_program(folder: str | os.PathLike, name: str, compiled: jax.stages.Compiled) -> None:
    """Serializes a compiled one-device program into entry `name`.

    It must have been compiled, not loaded from XLA's persistent cache: such an executable serializes without its
    code on CPU (jaxlib 0.10: running it back fails with 'Function ... not found'); see `unique_name`."""
    try:
        shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
        (device,) = {d.id for s in shardings for d in s.device_set}
        executable, _, out_tree = serialize_executable.serialize(compiled)
    except Exception as err:  # a backend or program that cannot be serialized: compiled on every run
        log.debug("cannot save the program %s: %s: %s", name, type(err).__name__, err)
        return
    write(folder, name, pickle.dumps((executable, out_tree, device)))


def load_program(folder: str | os.PathLike, name: str,
                 call_tree: jax.tree_util.PyTreeDef) -> jax.stages.Compiled | None:
    """The program `save_program` kept in entry `name`, called with arguments of the structure `call_tree`
    (`jax.tree.structure((args, {}))` of a call: any tree with the compiled program's leaves in its order), or None
    when missing or unusable."""
    payload = read(folder, name)
    if payload is None:
        return None
    try:
        executable, out_tree, device = pickle.loads(payload)
        devices = [d for d in jax.devices() if d.id == device]
        return serialize_executable.deserialize_and_load(executable, call_tree, out_tree, execution_devices=devices)
    except Exception as err:  # an entry of another build of the libraries: recompiled and rewritten
        log.debug("ignoring the unusable cache entry %s: %s: %s", name, type(err).__name__, err)
        return None
