"""Output error of each compute dtype against the upstream float32 goldens, on whatever backend JAX runs.

    python benchmarks/precision.py [--configs tiny large] [--dtypes float32 bfloat16] [--json out.json]

The goldens hold upstream's float32 CPU outputs (tiny_caseA, tiny_caseB, large_caseA, variant ids_default); the
error is max|out - ref| / max|ref| over every output of every view, as the parity tests measure it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np

from fast3r_jax import config as config_lib
from fast3r_jax.convert.reference import reference_state_dict
from fast3r_jax.convert.table import params_from_torch
from fast3r_jax.inference.predict import predict
from fast3r_jax.model.fast3r import OUTPUT_KEYS

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"  # the goldens and the weights manifest
CASES = {"tiny": ("tiny_caseA", "tiny_caseB"), "large": ("large_caseA",)}


def golden_weights(name: str) -> dict[str, np.ndarray]:
    """The goldens' upstream weights: the tiny config's shipped subset plus the rest rebuilt from the manifest."""
    shipped = {}
    if name == "tiny":
        with np.load(DATA / "tiny_weights_subset.npz") as z:
            shipped = {k: z[k] for k in z.files}
    return reference_state_dict(json.loads((DATA / "weights_manifest.json").read_text())[name], shipped)


def errors_against(z, dtype: str, cfg: config_lib.Fast3RConfig, params: dict) -> dict[str, float]:
    """max|out - ref| / max|ref| per view and output (non-finite outputs count as an infinite error)."""
    count = len([k for k in z.files if k.startswith("input/img_v")])
    views = [dict(img=z[f"input/img_v{i}"], true_shape=z[f"input/true_shape_v{i}"]) for i in range(count)]
    errors = {}
    for i, out in enumerate(predict(cfg, params, views, dtype=dtype)):
        for k in OUTPUT_KEYS:
            ours, ref = np.asarray(out[k], np.float64), z[f"ids_default/out_v{i}_{k}"].astype(np.float64)
            finite = np.isfinite(ours).all()
            errors[f"v{i}/{k}"] = float(np.abs(ours - ref).max() / np.abs(ref).max()) if finite else float("inf")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "large"], choices=sorted(CASES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    rows = []
    for name in args.configs:
        cfg = getattr(config_lib, name)()
        params = params_from_torch(golden_weights(name), cfg)
        for case in CASES[name]:
            z = np.load(DATA / f"{case}.npz")
            for dtype in args.dtypes:
                start = time.perf_counter()
                errors = errors_against(z, dtype, cfg, params)
                worst = max(errors, key=errors.get)
                rows.append(dict(config=name, case=case, dtype=dtype, max_rel_err=errors[worst], worst=worst,
                                 seconds=time.perf_counter() - start))
                print(f"{case:12s} {dtype:9s} max rel err {errors[worst]:.2e} ({worst})", flush=True)
    env = dict(backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), jax=jax.__version__,
               python=platform.python_version())
    print(json.dumps(env))
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, rows=rows), indent=1))


if __name__ == "__main__":
    main()
