"""Shared helpers for the parity tests against the upstream goldens (tests/data/*_case*.npz)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fast3r_jax.model.attention import XLA
from fast3r_jax.model.fast3r import OUTPUT_KEYS, orientation_of

VARIANTS = ("ids_default", "ids_forced", "train_scale")


def rel_err(out, ref) -> float:
    """max |out - ref| / max |ref| (the parity metric); inf when either side holds a NaN or an infinity, so a broken
    output can never compare as close."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if not (np.isfinite(out).all() and np.isfinite(ref).all()):
        return float("inf")
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def view_errors(outputs: list[dict], refs: list[dict], keys=OUTPUT_KEYS) -> dict[str, float]:
    """rel_err per view and key of two per-view output lists; fails on a missing view or key (no silent zip)."""
    assert len(outputs) == len(refs), f"{len(outputs)} views against {len(refs)} references"
    for i, (out, ref) in enumerate(zip(outputs, refs)):
        missing = [k for k in keys if k not in out or k not in ref]
        assert not missing, f"view {i} lacks {missing}"
    return {f"v{i}/{k}": rel_err(out[k], ref[k]) for i, (out, ref) in enumerate(zip(outputs, refs)) for k in keys}


def assert_within(errors: dict[str, float], tol: float, count: int | None = None) -> float:
    """Fails unless every error is finite and <= tol (and, given `count`, there are exactly that many); returns the
    largest. Use this, never the built-in max(), which drops a NaN unless it comes first."""
    assert errors, "no errors to check"
    if count is not None:
        assert len(errors) == count, f"{len(errors)} errors, expected {count}: {sorted(errors)}"
    values = np.asarray(list(errors.values()), np.float64)
    assert np.isfinite(values).all() and (values <= tol).all(), {k: v for k, v in errors.items() if not v <= tol}
    return float(values.max())


def golden_views(z) -> list[dict]:
    n = len([k for k in z.files if k.startswith("input/img_v")])
    return [dict(img=z[f"input/img_v{i}"], true_shape=z[f"input/true_shape_v{i}"]) for i in range(n)]


def per_view_ids(z, variant: str, views: list[dict], patch: int = 16) -> list[int]:
    """The golden stores one id per token; take each view's first token."""
    token_ids = z[f"{variant}/image_ids"][0]
    starts = np.cumsum([0] + [v["img"].shape[2] * v["img"].shape[3] // patch**2 for v in views])[:-1]
    return [int(token_ids[s]) for s in starts]


def golden_outputs(z, prefix: str) -> list[dict]:
    """The golden's per-view outputs of one variant: {key: (B, H, W[, 3])} for every view it stores."""
    count = len([k for k in z.files if k.startswith(f"{prefix}/out_v") and k.endswith("_conf_local")])
    return [{k: z[f"{prefix}/out_v{i}_{k}"] for k in OUTPUT_KEYS} for i in range(count)]


def output_errors(outputs: list[dict], z, prefix: str) -> dict[str, float]:
    """rel_err of every output of every view against the golden (a missing view or key fails)."""
    return view_errors(outputs, golden_outputs(z, prefix))


def intermediates(model, views: list[dict], ids: list[int], train_attention_scale: bool) -> dict[str, np.ndarray]:
    """Encoder outputs/positions per view (each view encoded on its own) and the four fusion hooks."""
    enc, pos = [], []
    with jax.default_matmul_precision("highest"):
        for v in views:
            shape = np.asarray(v["true_shape"])
            t, p = model.encoder(jnp.asarray(v["img"]), jnp.asarray(shape), orientation_of(shape), attention=XLA)
            enc.append(np.asarray(t))
            pos.append(np.asarray(p))
        lengths = tuple(t.shape[1] for t in enc)
        hooks = model.fuse(jnp.concatenate(enc, axis=1), lengths, jnp.asarray([ids], jnp.int32), attention=XLA,
                           train_attention_scale=train_attention_scale)
    out = {f"enc_out_v{i}": e for i, e in enumerate(enc)} | {f"enc_pos_v{i}": p for i, p in enumerate(pos)}
    out |= {f"dec_hook_{k}": np.asarray(h) for k, h in zip(model.cfg.hooks, hooks)}
    return out


def intermediate_errors(inter: dict[str, np.ndarray], z, prefix: str) -> dict[str, float]:
    """Compares against the golden intermediates; views encoded as one batch in the golden are split."""
    errors = {}
    for name in z.files:
        if not name.startswith(prefix + "/") or "/out_" in name or name.endswith("image_ids"):
            continue
        key = name.split("/", 1)[1]
        ref = z[name]
        if key == "dec_final":
            key = f"dec_hook_{max(int(k.split('_')[-1]) for k in inter if k.startswith('dec_hook_'))}"
        if key.startswith("enc_") and ref.shape[0] > 1:  # same-shape views batched: (V, n, D)
            kind = key.rsplit("_", 1)[0]
            ours = np.concatenate([inter[f"{kind}_v{i}"] for i in range(ref.shape[0])], axis=0)
        else:
            ours = inter[key]
        if key.startswith("enc_pos"):
            np.testing.assert_array_equal(ours, ref)
            continue
        errors[name.split("/", 1)[1]] = rel_err(ours, ref)
    return errors
