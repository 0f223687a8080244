import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast3r_jax.model.image_index_embedding import image_index_embedding, sample_image_ids, sincos_table


def test_table_rows_follow_the_formula():
    table = sincos_table(1000, 64)
    omega = 1.0 / 10000 ** (np.arange(32) / 32.0)
    for p in (0, 1, 503, 999):
        np.testing.assert_allclose(table[p], np.concatenate([np.sin(p * omega), np.cos(p * omega)]), atol=1e-7)
    assert table.shape == (1000, 64) and table.dtype == np.float32


def test_table_is_not_limited_to_1000_rows():
    big = sincos_table(1500, 64)
    np.testing.assert_array_equal(big[:1000], sincos_table(1000, 64))
    np.testing.assert_array_equal(np.asarray(image_index_embedding(jnp.asarray([1200]), 64, 1500))[0], big[1200])


def test_fractional_ids_interpolate_the_formula():
    ids = jnp.asarray([3.0, 3.5, 998.25])
    emb = np.asarray(image_index_embedding(ids, 64, 1000))
    np.testing.assert_allclose(emb[0], sincos_table(1000, 64)[3], atol=1e-6)
    omega = 1.0 / 10000 ** (np.arange(32) / 32.0)
    np.testing.assert_allclose(emb[1], np.concatenate([np.sin(3.5 * omega), np.cos(3.5 * omega)]), atol=1e-5)
    # near the table's end the float32 angle p * omega (up to 998 rad) carries ~998 * 2**-24 of rounding
    np.testing.assert_allclose(emb[2], np.concatenate([np.sin(998.25 * omega), np.cos(998.25 * omega)]), atol=1e-4)


def test_out_of_range_integer_ids_raise():
    with pytest.raises(ValueError, match="1000"):
        image_index_embedding(jnp.asarray([0, 1000]), 64, 1000)


def test_sampled_ids_are_upstream_style_and_seeded():
    ids = np.asarray(sample_image_ids(jax.random.key(7), batch=16, num_views=50))
    assert ids.shape == (16, 50)
    assert (ids[:, 0] == 0).all()
    assert ((ids[:, 1:] >= 1) & (ids[:, 1:] <= 999)).all()
    assert all(len(set(row)) == 50 for row in ids.tolist())
    assert len({tuple(r) for r in ids.tolist()}) == 16  # samples differ
    np.testing.assert_array_equal(ids, sample_image_ids(jax.random.key(7), batch=16, num_views=50))
    assert not np.array_equal(ids, sample_image_ids(jax.random.key(8), batch=16, num_views=50))
    with pytest.raises(ValueError, match="distinct"):
        sample_image_ids(jax.random.key(0), batch=1, num_views=1001)
