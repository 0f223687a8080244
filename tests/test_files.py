"""Atomic files and folders: nothing partial looks complete, nothing the tool did not write is replaced."""

import json
import os
import subprocess
import sys

import pytest

from fast3r_jax.errors import InputError
from fast3r_jax.io.files import MARKER, atomic_file, atomic_folder, check_output_folder


def test_failed_write_leaves_no_output_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_folder(out, kind="test") as folder:
            (folder / "points.ply").write_text("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(out, kind="test") as folder:
        (folder / "points.ply").write_text("complete")
    assert json.loads((out / MARKER).read_text()) == {"written_by": "fast3r-jax", "kind": "test"}
    with pytest.raises(RuntimeError):
        with atomic_folder(out, kind="test", overwrite=True) as folder:
            (folder / "points.ply").write_text("partial")
            raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "points.ply").read_text() == "complete"
    with atomic_folder(out, kind="test", overwrite=True) as folder:
        (folder / "points.ply").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "points.ply").read_text() == "new"


def test_overwrite_refuses_folders_the_tool_did_not_write(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        check_output_folder(photos, overwrite=False)
    with pytest.raises(InputError, match="not written by fast3r-jax"):
        with atomic_folder(photos, kind="test", overwrite=True):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_output_folder(tmp_path / "file", overwrite=True)
    assert (photos / "a.jpg").read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == [
        "file", "photos"]


def test_overwrite_refuses_inputs_their_parents_and_the_current_folder(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    image = photos / "a.jpg"
    image.write_bytes(b"precious")
    (photos / MARKER).write_text("{}")  # even a marked folder is refused when it holds an input
    for out in (photos, tmp_path, photos / "sub"):
        with pytest.raises(InputError, match="overlaps the input"):
            check_output_folder(out, overwrite=True, inputs=[image, photos])
    monkeypatch.chdir(photos)
    for out in (photos, tmp_path, "."):
        with pytest.raises(InputError, match="current folder"):
            check_output_folder(out, overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(photos)
    with pytest.raises(InputError, match="symbolic link"):
        check_output_folder(link, overwrite=True)
    assert image.read_bytes() == b"precious"


def test_a_killed_run_leaves_a_temporary_folder_that_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    code = ("import os, sys; from fast3r_jax.io.files import atomic_folder\n"
            "with atomic_folder(sys.argv[1], kind='test') as f:\n"
            "    (f / 'half.txt').write_text('x'); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code, str(out)]).returncode == 9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.fast3r-jax-tmp-") and not out.exists()
    with atomic_folder(out, kind="test") as folder:
        (folder / "done.txt").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_interrupted_file_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(path) as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
