"""The persistent XLA compilation cache: compiled programs kept on disk so that a second run skips compilation.

On by default in the user's cache folder (`default_path`); `JAX_COMPILATION_CACHE_DIR` overrides the folder, and
`enable("off")` (the command's `--compilation-cache off`) leaves the cache off. Every program is cached, however small
and however quick to compile, so that CPU runs (many small programs) profit too.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import jax

OFF = "off"
ENV = "JAX_COMPILATION_CACHE_DIR"


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
