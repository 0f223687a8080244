"""The reference goldens' weights (tests/data/weights_manifest.json), rebuilt by fast3r_jax.convert.reference."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from fast3r_jax.convert import reference

DATA = pathlib.Path(__file__).parents[1] / "data"


def reference_state_dict(name: str) -> dict[str, np.ndarray]:
    """All upstream tensors of config `name` ('tiny' or 'large'), checked against the manifest's SHA-256s; the
    tiny config's shipped subset (tiny_weights_subset.npz) is used as stored."""
    shipped = {}
    if name == "tiny":
        with np.load(DATA / "tiny_weights_subset.npz") as z:
            shipped = {k: z[k] for k in z.files}
    return reference.reference_state_dict(json.loads((DATA / "weights_manifest.json").read_text())[name], shipped)


def tiny_state_dict() -> dict[str, np.ndarray]:
    return reference_state_dict("tiny")
