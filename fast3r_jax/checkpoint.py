"""Pretrained checkpoints on disk: `config.json` + Orbax parameters, written atomically.

Layout of a checkpoint folder:
    config.json      the Fast3RConfig
    params/          Orbax PyTree checkpoint of the parameters (float32)
    manifest.json    parameter paths and shapes (checked before restoring), plus conversion notes
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fast3r_jax.config import Fast3RConfig, load_config_file
from fast3r_jax.errors import InputError
from fast3r_jax.io.files import atomic_folder
from fast3r_jax.model.params import abstract_params, check_params, flat_params


class CheckpointError(InputError):
    """A checkpoint folder is missing, incomplete or does not match its config."""


STORAGE_DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}


def save_pretrained(directory: str | os.PathLike, config: Fast3RConfig, params: Mapping,
                    notes: Mapping[str, Any] | None = None, overwrite: bool = False,
                    storage_dtype: str = "float32", inputs: Sequence[str | os.PathLike] = ()) -> pathlib.Path:
    """Writes config + params into `directory`. The folder appears only once complete (rename of a temp folder);
    with `overwrite` it replaces only a folder that this tool wrote (see fast3r_jax.io.files).

    storage_dtype 'bfloat16' halves the size on disk; `load_pretrained` returns float32 unless asked otherwise. inputs: files or
    folders the job read (a converted checkpoint's source), which the folder may not be, contain or lie inside.
    A full or read-only disk raises its OSError (not Orbax's wrapper), and nothing of the folder is left.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")
    check_params(params, config)
    with atomic_folder(directory, kind="checkpoint", overwrite=overwrite, inputs=inputs,
                       what="checkpoint folder") as tmp, _os_errors_unwrapped():
        params = jax.tree.map(lambda x: np.asarray(x, np.float32).astype(STORAGE_DTYPES[storage_dtype]),
                              dict(params))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            ckptr.wait_until_finished()
        (tmp / "config.json").write_text(config.to_json())
        manifest = {"params": {k: list(np.shape(v)) for k, v in flat_params(params).items()},
                    "storage_dtype": storage_dtype, "notes": dict(notes or {})}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    target = pathlib.Path(directory).resolve()
    return target


@contextlib.contextmanager
def _os_errors_unwrapped() -> Iterator[None]:
    """Re-raises the OSError (a full disk, a read-only folder) that Orbax wrapped in another exception; Orbax's own
    error logs (hundreds of lines of traces from its writer threads) stay quiet meanwhile: the error says it all."""
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.CRITICAL)
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        cause = err
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None
    finally:
        absl_log.setLevel(level)


def load_config(directory: str | os.PathLike) -> Fast3RConfig:
    path = pathlib.Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a fast3r-jax checkpoint folder")
    return load_config_file(path, expect=Fast3RConfig)


def load_pretrained(directory: str | os.PathLike, sharding: jax.sharding.Sharding | Mapping | None = None,
                    dtype: Any = np.float32, cache_dir: str | os.PathLike | None = None
                    ) -> tuple[Fast3RConfig, dict]:
    """Restores (config, params) from a folder written by `save_pretrained` or `python -m fast3r_jax.convert`.

    sharding: one Sharding for every parameter, or a tree of Shardings shaped like the parameters; by default
    the parameters land on this process's first device (with several processes, each restores its own copy).
    dtype: the parameters' dtype, whatever the storage's: Orbax casts while reading, so that e.g. a float32
    checkpoint for bfloat16 compute (the model casts its parameters to its compute dtype anyway, so its outputs are
    the same) moves half the bytes to the device and is held there once. cache_dir: a compilation cache folder
    that keeps the config's parameter tree (model.params.abstract_params), checked against before restoring.
    """
    directory = pathlib.Path(directory).absolute()
    config = load_config(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file() or not (directory / "params").is_dir():
        raise CheckpointError(f"{directory} is incomplete: expected config.json, manifest.json and params/")
    try:
        stored = json.loads(manifest_path.read_text())["params"]
        stored = {str(k): list(v) for k, v in stored.items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CheckpointError(f"{manifest_path} is damaged: {type(err).__name__}: {err}") from None
    abstract = abstract_params(config, dtype, cache_dir)  # the trace an engine computing in `dtype` reuses
    expected = {k: list(v.shape) for k, v in flat_params(abstract).items()}
    problems = [f"missing: {k}" for k in sorted(set(expected) - set(stored))]
    problems += [f"unexpected: {k}" for k in sorted(set(stored) - set(expected))]
    problems += [f"mis-shaped: {k}: {stored[k]} vs {expected[k]}" for k in sorted(set(stored) & set(expected))
                 if stored[k] != expected[k]]
    if problems:
        raise CheckpointError(f"{directory} does not match its config.json:\n  " + "\n  ".join(problems))

    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, dtype, sharding=s), abstract, sharding)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(directory / "params", target)
    except Exception as err:  # Orbax reports damaged data files with a bare Exception
        message = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{directory}: the parameters under params/ cannot be restored (damaged or "
                              f"incomplete checkpoint): {type(err).__name__}: {message}") from err
    return config, params
