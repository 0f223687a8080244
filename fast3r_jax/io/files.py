"""Writing files and folders so that nothing partial looks complete and nothing this tool did not write is replaced.

Every folder the tool writes (reconstructions, checkpoints, evaluation reports) is built under a temporary name next
to its target and renamed into place once complete; it carries a marker file, MARKER, and only a folder with that
marker may be replaced (`overwrite=True`). A folder that is, contains or lies inside one of the job's inputs, and the
current folder or any of its ancestors, are never replaced. Temporary folders of killed runs are recognised by their
name and removed by the next run into the same place.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from typing import IO, Iterator, Sequence

from fast3r_jax.errors import InputError

MARKER = ".fast3r-jax"  # JSON {"written_by": "fast3r-jax", "kind": ...} inside every folder the tool writes
_TEMP_TAG = ".fast3r-jax-tmp-"  # .<name>.fast3r-jax-tmp-<pid>-<hex>: a folder being written
_OLD_TAG = ".fast3r-jax-old-"  # .<name>.fast3r-jax-old-<pid>-<hex>: a replaced folder being removed

PathLike = str | os.PathLike


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    """Whether `path` is `folder` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def written_by_tool(folder: PathLike) -> bool:
    """Whether `folder` carries this tool's marker."""
    return (pathlib.Path(folder) / MARKER).is_file()


def check_output_folder(out: PathLike, *, overwrite: bool, inputs: Sequence[PathLike] = (),
                        what: str = "output folder") -> pathlib.Path:
    """Checks that `out` may be written (and replaced with `overwrite`); returns it resolved.

    Refused, with an InputError naming the folder: an existing `out` without `overwrite`; with `overwrite`, one that
    is not a folder or lacks the marker; the current folder or one of its ancestors; a folder that is, contains or
    lies inside any of `inputs`; a symbolic link; a parent that cannot be written.
    """
    given = pathlib.Path(out)
    if given.is_symlink():
        raise InputError(f"{what} {given} is a symbolic link; give the folder it points to")
    target = given.resolve()
    cwd = pathlib.Path.cwd().resolve()
    if _inside(cwd, target):
        raise InputError(f"{what} {given} is the current folder or one of its ancestors")
    for source in inputs:
        source = pathlib.Path(source).resolve()
        if _inside(source, target) or _inside(target, source):
            raise InputError(f"{what} {given} overlaps the input {source}: it would replace or mix with the input")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise InputError(f"{what} {given} already exists; pass --overwrite to replace it")
        if not target.is_dir():
            raise InputError(f"{what} {given} exists and is not a folder; refusing to replace it")
        if not written_by_tool(target):
            raise InputError(f"{what} {given} was not written by fast3r-jax (no {MARKER} marker inside); refusing "
                             "to replace it")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {given}: cannot write into {parent}")
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(target: pathlib.Path) -> None:
    """Removes temporary folders that killed runs left next to `target` (their process is gone)."""
    if not target.parent.is_dir():
        return
    for tag in (_TEMP_TAG, _OLD_TAG):
        for leftover in target.parent.glob(f".{target.name}{tag}*"):
            pid = leftover.name[len(f".{target.name}{tag}"):].split("-")[0]
            if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                shutil.rmtree(leftover, ignore_errors=True)


def _sibling(target: pathlib.Path, tag: str) -> pathlib.Path:
    return target.with_name(f".{target.name}{tag}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_folder(out: PathLike, *, kind: str, overwrite: bool = False, inputs: Sequence[PathLike] = (),
                  what: str = "output folder") -> Iterator[pathlib.Path]:
    """Yields an empty temporary folder; when the block succeeds it becomes `out` (marked as the tool's, `kind`
    saying what it holds), replacing an older `out` only after the new one is complete. On failure nothing of it is
    left. See `check_output_folder` for what is refused."""
    target = check_output_folder(out, overwrite=overwrite, inputs=inputs, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = _sibling(target, _TEMP_TAG)
    tmp.mkdir()
    try:
        (tmp / MARKER).write_text(json.dumps({"written_by": "fast3r-jax", "kind": kind}) + "\n")
        yield tmp
        if target.exists():
            check_output_folder(out, overwrite=overwrite, inputs=inputs, what=what)  # still ours
            old = _sibling(target, _OLD_TAG)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yields a file under a temporary name next to `path`; renames it to `path` only if the block succeeds."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
    try:
        with open(tmp, mode.replace("w", "x"), **text) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
