"""Upstream's reference weights: the deterministic per-key draw the published parity goldens were made with.

Keys are upstream state-dict names; each tensor is drawn from np.random.default_rng([seed, index]) in sorted-key
order, and the result is checked against a manifest of SHA-256s, so weights that are not shipped (ViT-L's 654M
values) can be rebuilt exactly wherever the goldens are used.
"""

from __future__ import annotations

import hashlib

import numpy as np


def draw(key: str, shape: tuple[int, ...], seed: int, index: int) -> np.ndarray:
    """One tensor of the rule: norm weights near 1, small biases, other vectors uniform, matrices fan-in uniform."""
    rng = np.random.default_rng([seed, index])
    path, leaf = key.rsplit(".", 1)
    if len(shape) == 1 and leaf == "weight" and "norm" in path:
        value = 1 + 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1 and leaf == "bias":
        value = 0.02 * rng.standard_normal(shape)
    elif len(shape) == 1:
        value = rng.uniform(-0.02, 0.02, shape)
    else:
        bound = 1.5 / np.sqrt(np.prod(shape[1:]))
        value = rng.uniform(-bound, bound, shape)
    return value.astype(np.float32)


def reference_state_dict(manifest: dict, shipped: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every tensor a manifest entry lists ({'seed', 'keys': [{'key', 'shape', 'alias_of', 'sha256'}],
    'sha256_all'}), checked against its SHA-256s; `shipped` tensors are used as they are (still checked)."""
    shipped = shipped or {}
    entries = sorted(manifest["keys"], key=lambda e: e["key"])
    out: dict[str, np.ndarray] = {}
    for index, entry in enumerate(entries):
        key, shape = entry["key"], tuple(entry["shape"])
        if entry["alias_of"] is not None:
            continue
        out[key] = shipped[key] if key in shipped else draw(key, shape, manifest["seed"], index)
    for entry in entries:
        if entry["alias_of"] is not None:
            out[entry["key"]] = out[entry["alias_of"]].copy()
    bad = [e["key"] for e in entries if hashlib.sha256(out[e["key"]].tobytes()).hexdigest() != e["sha256"]]
    if bad:
        raise ValueError(f"{len(bad)} regenerated tensors do not match the manifest, e.g. {bad[:3]}")
    total = hashlib.sha256(b"".join(out[k].tobytes() for k in sorted(out))).hexdigest()
    if total != manifest["sha256_all"]:
        raise ValueError(f"weights SHA-256 {total} != manifest {manifest['sha256_all']}")
    return out
