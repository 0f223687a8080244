"""Many-view engine: parity with the upstream goldens (mixed shapes, portrait), chunking, image-id policies, programs
kept in a compilation cache folder."""

import collections
import dataclasses

import jax
import numpy as np
import pytest

from fast3r_jax import compilation_cache
from fast3r_jax import config as config_lib
from fast3r_jax.convert.table import params_from_torch
from fast3r_jax.inference import engine as engine_lib
from fast3r_jax.inference.engine import Engine, chunk_views, make_image_ids
from fast3r_jax.model.fast3r import OUTPUT_KEYS
from fast3r_jax.model.image_index_embedding import check_image_ids
from tests.helpers.parity import assert_within, golden_views, rel_err, view_errors
from tests.helpers.reference_weights import DATA, tiny_state_dict

TOL = 1e-5  # max |out - ref| / max |ref|, float32 (measured 1.5e-6 vs the goldens)
CFG = config_lib.tiny()


@pytest.fixture(scope="module")
def params():
    return params_from_torch(tiny_state_dict(), CFG)


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "tiny_caseB.npz")


def _portrait(true_shape) -> bool:
    height, width = np.asarray(true_shape).reshape(2)
    return height > width


@pytest.fixture(scope="module")
def views(golden):
    """caseB in true orientation: 48x64, 64x48 (portrait, stored transposed in the golden), 32x80."""
    out = []
    for v in golden_views(golden):
        img = v["img"].swapaxes(-1, -2) if _portrait(v["true_shape"]) else v["img"]
        out.append(dict(img=img, true_shape=v["true_shape"]))
    assert [v["img"].shape[2:] for v in out] == [(48, 64), (64, 48), (32, 80)]
    return out


@pytest.fixture(scope="module")
def engine(params):
    return Engine(CFG, params, dtype="float32")


def test_engine_matches_golden_in_true_orientation(engine, views, golden):
    outputs = engine(views, image_ids=np.array([0, 17, 503]))
    refs = [{k: golden[f"ids_forced/out_v{i}_{k}"][0] for k in OUTPUT_KEYS} for i in range(3)]
    refs[1] = {k: v.swapaxes(0, 1) for k, v in refs[1].items()}  # upstream returns the portrait view transposed
    assert outputs[1]["conf"].shape == (64, 48)
    assert_within(view_errors(outputs, refs), TOL, count=12)


def _upstream_style_draw(seed: int, num_views: int) -> np.ndarray:
    """Upstream's draw written out: view 0 gets 0, the others the first num_views - 1 rows of a permutation of
    1..999 (jax.random in place of torch.randperm, from the seed's one batch key)."""
    (key,) = jax.random.split(jax.random.key(seed), 1)
    return np.concatenate([[0], np.asarray(jax.random.permutation(key, 999))[: num_views - 1] + 1])


def test_engine_default_ids_are_the_seeded_upstream_draw(engine, views):
    ids = engine.image_ids(3, seed=7)
    np.testing.assert_array_equal(ids, _upstream_style_draw(7, 3))
    outputs, explicit = engine(views, seed=7), engine(views, image_ids=ids)
    assert_within(view_errors(outputs, explicit), 0.0, count=12)


def test_chunk_sizes_do_not_change_outputs(params, views):
    """Five views in three shape groups (one portrait); the 3-view group is split over a full and a padded chunk."""
    many = views + [dict(img=-views[0]["img"]), dict(img=views[0]["img"][..., ::-1])]
    ids = np.array([0, 5, 9, 100, 200])
    ref = Engine(CFG, params, "float32", encoder_chunk=1, head_chunk=1)(many, ids)
    out = Engine(CFG, params, "float32", encoder_chunk=2, head_chunk=2)(many, ids)
    assert_within(view_errors(out, ref), TOL, count=20)


def test_new_view_count_recompiles_only_the_fusion(params, views):
    """Chunks of a fixed size keep the encoder's and heads' shapes, so a new view count compiles the fusion
    transformer (one program per count) and nothing else; the same count again compiles nothing."""
    eng = Engine(CFG, params, "float32", encoder_chunk=2, head_chunk=2)

    def programs() -> collections.Counter:
        return collections.Counter(signature[0] for signature in eng._programs)

    four = [views[0], dict(img=-views[0]["img"]), views[2], dict(img=-views[2]["img"])]  # two shapes, 2 views each
    six = four[:2] + [dict(img=views[0]["img"][..., ::-1]), dict(img=0.5 * views[0]["img"])] + four[2:]
    eng(four, np.arange(4))
    before = programs()
    eng(six, np.arange(6))
    grown = {name: programs()[name] - before[name] for name in ("encode_chunk", "_fuse", "_decode")}
    assert grown == {"encode_chunk": 0, "_fuse": 1, "_decode": 0}, grown
    eng(six, np.arange(6) + 10)
    assert programs() - before == collections.Counter({"_fuse": 1})


def test_single_view(engine, views):
    (out,) = engine(views[1:2], image_ids=np.array([0]))
    assert out["pts3d_in_other_view"].shape == (64, 48, 3) and np.isfinite(np.asarray(out["conf"])).all()


def test_chunk_plan_pads_the_last_chunk_to_a_power_of_two():
    assert chunk_views(list(range(5)), 16) == [[0, 1, 2, 3, 4, 0, 0, 0]]
    assert chunk_views(list(range(19)), 8) == [list(range(8)), list(range(8, 16)), [16, 17, 18, 0]]
    assert chunk_views([3, 4], 2) == [[3, 4]]
    assert chunk_views([7], 8) == [[7]]


def test_random_and_sequential_ids_up_to_the_table_size():
    ids = make_image_ids(10, "random", seed=3)
    np.testing.assert_array_equal(ids, _upstream_style_draw(3, 10))
    assert ids[0] == 0 and len(set(ids.tolist())) == 10 and 1 <= ids[1:].min() and ids.max() <= 999
    np.testing.assert_array_equal(make_image_ids(10, "random", seed=3), ids)  # reproducible
    assert not np.array_equal(make_image_ids(10, "random", seed=4), ids)
    np.testing.assert_array_equal(make_image_ids(10, "sequential"), np.arange(10))
    assert make_image_ids(1000, "random").max() == 999  # all 1000 rows used


def test_more_views_than_ids_spread_fractional_ids_over_the_table():
    seq = make_image_ids(1100, "sequential")
    assert seq.dtype == np.float32 and seq[0] == 0 and seq[-1] == 999
    np.testing.assert_allclose(np.diff(seq.astype(np.float64)), 999 / 1099, rtol=1e-4)
    rnd = make_image_ids(1100, "random", seed=1)
    assert rnd[0] == 0 and not np.array_equal(rnd, seq)
    np.testing.assert_array_equal(np.sort(rnd), seq)
    few = make_image_ids(4, "sequential", interpolate=True)  # the same grid on request, at any view count
    np.testing.assert_allclose(few, [0, 333, 666, 999])
    with pytest.raises(ValueError, match="more than the 1000 rows"):
        make_image_ids(1001, "random", interpolate=False)


def test_fractional_ids(engine, views, golden):
    """Integer-valued float ids give the table rows (the golden outputs); fractional ids move the outputs."""
    refs = [{k: golden[f"ids_forced/out_v{i}_{k}"][0] for k in OUTPUT_KEYS} for i in range(3)]
    refs[1] = {k: v.swapaxes(0, 1) for k, v in refs[1].items()}
    assert_within(view_errors(engine(views, np.array([0.0, 17.0, 503.0], np.float32)), refs), TOL, count=12)
    between = engine(views, np.array([0.0, 17.5, 503.0], np.float32))
    assert all(np.isfinite(np.asarray(o[k])).all() for o in between for k in OUTPUT_KEYS)
    assert rel_err(np.asarray(between[1]["pts3d_in_other_view"]), refs[1]["pts3d_in_other_view"]) > 1e-3


def test_engine_ids_beyond_the_table_are_fractional(params):
    engine = Engine(dataclasses.replace(CFG, fusion=dataclasses.replace(CFG.fusion, num_image_ids=4)), params)
    np.testing.assert_allclose(engine.image_ids(6, "sequential"), [0, 0.6, 1.2, 1.8, 2.4, 3.0], rtol=1e-6)
    assert engine.image_ids(4).dtype == np.int32 and engine.image_ids(5).dtype == np.float32


def test_bad_inputs_raise(engine, views, params):
    with pytest.raises(ValueError, match="at least one view"):
        engine([])
    with pytest.raises(ValueError, match="view 0: img must have shape"):
        engine([dict(img=np.zeros((2, 3, 32, 32), np.float32))])
    with pytest.raises(ValueError, match="does not match the image"):
        engine([dict(img=views[1]["img"], true_shape=np.array([[48, 64]]))])
    with pytest.raises(ValueError, match="one id per view"):
        engine(views, image_ids=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1000\)"):
        check_image_ids(np.array([0, 1000]), 2, 1000)
    with pytest.raises(ValueError, match="policy"):
        make_image_ids(3, "shuffled")
    with pytest.raises(ValueError, match="dtype"):
        Engine(CFG, params, dtype="float16")
    with pytest.raises(ValueError, match="head_chunk"):
        Engine(CFG, params, head_chunk=0)


def test_lower_fusion_plans_memory_for_any_view_count(engine):
    """The fusion step lowered from abstract inputs: its outputs are the four hook arrays of every view (padded to
    the head chunks), so their bytes grow exactly with the view count; nothing runs."""
    h, w = 64, 96
    tokens = (h // 16) * (w // 16)
    hook_dims = [CFG.encoder.embed_dim] + [CFG.fusion.embed_dim] * 3
    itemsize = np.dtype(engine_lib.DTYPES[engine.dtype]).itemsize
    for n in (3, 9):
        mem = engine.lower_fusion(n, h, w).compile().memory_analysis()
        chunks = chunk_views(list(range(n)), engine.head_chunk)
        data = sum(map(len, chunks)) * tokens * sum(hook_dims) * itemsize
        arrays = 4 * len(chunks)  # XLA adds the output tuple's table of pointers, 8 bytes per array
        assert data <= mem.output_size_in_bytes <= data + 8 * arrays


# ----------------------------------------------------------------------------
# Programs kept in a compilation cache folder.
# ----------------------------------------------------------------------------


def _entries(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted((folder / compilation_cache.ENTRIES).glob("engine-*"))}


def _assert_same(outputs, refs):
    for out, ref in zip(outputs, refs, strict=True):
        assert all(np.array_equal(np.asarray(out[k]), np.asarray(ref[k])) for k in OUTPUT_KEYS)


def test_engine_loads_its_programs_from_the_cache_folder_without_building_the_model(params, views, tmp_path):
    """A second engine on the same folder runs every stage from the saved programs, never building (tracing) the
    model, with outputs identical to the first's; it writes nothing new."""
    ids = np.array([0, 17, 503])
    first = Engine(CFG, params, "float32", cache_dir=tmp_path)
    ref = first(views, ids)
    saved = _entries(tmp_path)
    assert len(saved) == 2 * 3 + 1 and "_module" in vars(first)  # encoder and heads per shape group, one fusion
    second = Engine(CFG, params, "float32", cache_dir=tmp_path)
    _assert_same(second(views, ids), ref)
    assert "_module" not in vars(second) and _entries(tmp_path) == saved


def test_damaged_program_entries_are_recompiled_and_rewritten(params, views, tmp_path):
    """Entries cut short, with a flipped byte or with a payload that is not a program (checksum intact) read as
    missing: the engine compiles those stages again, with the same outputs, and rewrites them."""
    ids = np.array([0, 17, 503])
    ref = Engine(CFG, params, "float32", cache_dir=tmp_path)(views, ids)
    saved = _entries(tmp_path)
    paths = sorted((tmp_path / compilation_cache.ENTRIES).glob("engine-*"))
    paths[0].write_bytes(saved[paths[0].name][:100])
    damaged = bytearray(saved[paths[1].name])
    damaged[-10] ^= 0xFF
    paths[1].write_bytes(bytes(damaged))
    compilation_cache.write(tmp_path, paths[2].name, b"not a program")
    again = Engine(CFG, params, "float32", cache_dir=tmp_path)
    _assert_same(again(views, ids), ref)
    assert "_module" in vars(again) and all(compilation_cache.read(tmp_path, p.name) is not None for p in paths)
    fresh = Engine(CFG, params, "float32", cache_dir=tmp_path)
    _assert_same(fresh(views, ids), ref)
    assert "_module" not in vars(fresh)


def test_programs_of_other_settings_are_not_taken_from_the_folder(params, views, tmp_path):
    """Another compute dtype or other weights' shapes make other entries: nothing of the first engine's is reused."""
    Engine(CFG, params, "float32", cache_dir=tmp_path)(views[:1], np.array([0]))
    before = set(_entries(tmp_path))
    other = Engine(CFG, params, "bfloat16", cache_dir=tmp_path)
    other(views[:1], np.array([0]))
    assert "_module" in vars(other) and len(set(_entries(tmp_path)) - before) == 3
