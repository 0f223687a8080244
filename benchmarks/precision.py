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
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))  # golden helpers and data

from parity import golden_views, output_errors  # noqa: E402
from reference_weights import DATA, reference_state_dict, tiny_state_dict  # noqa: E402

from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax.convert.table import params_from_torch  # noqa: E402
from fast3r_jax.inference.predict import predict  # noqa: E402

CASES = {"tiny": ("tiny_caseA", "tiny_caseB"), "large": ("large_caseA",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "large"], choices=sorted(CASES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    rows = []
    for name in args.configs:
        cfg = getattr(config_lib, name)()
        params = params_from_torch(tiny_state_dict() if name == "tiny" else reference_state_dict(name), cfg)
        for case in CASES[name]:
            z = np.load(DATA / f"{case}.npz")
            for dtype in args.dtypes:
                start = time.perf_counter()
                errors = output_errors(predict(cfg, params, golden_views(z), dtype=dtype), z, "ids_default")
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
