"""Our own entries of the compilation cache folder: checksummed, written atomically, absent when damaged, and the
parameter tree of a config kept there so that a later process need not trace the model."""

import jax
import pytest

from fast3r_jax import compilation_cache
from fast3r_jax.config import tiny
from fast3r_jax.model import params as params_lib


def test_entries_read_back_and_damaged_ones_read_as_missing(tmp_path):
    name = compilation_cache.key("test", {"a": 1})
    assert compilation_cache.read(tmp_path, name) is None
    compilation_cache.write(tmp_path, name, b"payload")
    assert compilation_cache.read(tmp_path, name) == b"payload"
    path = tmp_path / compilation_cache.ENTRIES / name
    path.write_bytes(path.read_bytes()[:-1] + b"P")
    assert compilation_cache.read(tmp_path, name) is None
    compilation_cache.write(tmp_path, name, b"again")
    assert compilation_cache.read(tmp_path, name) == b"again"
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left


def test_keys_follow_their_parts_and_the_configuration():
    name = compilation_cache.key("test", [1, 2])
    assert name == compilation_cache.key("test", [1, 2]) != compilation_cache.key("test", [1, 3])
    with jax.numpy_rank_promotion("raise"):
        assert compilation_cache.key("test", [1, 2]) != name


def test_a_folder_that_cannot_be_written_keeps_nothing(tmp_path):
    (tmp_path / compilation_cache.ENTRIES).write_bytes(b"")  # a file where the entries' folder would be
    compilation_cache.write(tmp_path, "entry", b"payload")
    assert compilation_cache.read(tmp_path, "entry") is None


def test_parameter_tree_is_kept_without_tracing_the_model_again(tmp_path, monkeypatch):
    """The tree read back equals the traced one (key types, shapes, dtypes); reading it traces nothing; a damaged
    entry is traced again and rewritten."""
    cfg = tiny()
    traced = params_lib.abstract_params(cfg, cache_dir=tmp_path)
    monkeypatch.setattr(params_lib, "_abstract_model", lambda *_: pytest.fail("traced the model"))
    kept = params_lib.abstract_params(cfg, cache_dir=tmp_path)
    assert jax.tree.structure(kept) == jax.tree.structure(traced)
    assert jax.tree.leaves(kept) == jax.tree.leaves(traced)
    monkeypatch.undo()
    (entry,) = (tmp_path / compilation_cache.ENTRIES).iterdir()
    compilation_cache.write(tmp_path, entry.name, b"[[1]]")  # a valid entry of the wrong shape
    assert jax.tree.leaves(params_lib.abstract_params(cfg, cache_dir=tmp_path)) == jax.tree.leaves(traced)
    assert jax.tree.leaves(params_lib._tree_from_json(compilation_cache.read(tmp_path, entry.name))) == \
        jax.tree.leaves(traced)
