"""Images per second of the synthetic scenes rendered on the device (fast3r_jax.data.rendered) vs numpy on the host.

    python benchmarks/rendered_data.py                                  # the built-in recipe's buckets
    python benchmarks/rendered_data.py --buckets 6x16 24x4 --resolutions 128x96 96x128 --batches 20

Per bucket and resolution: the device path end to end (host scene drawing, transfer, ray casting, model layout;
median over --batches after a compiling batch), the ray casting alone on packed scenes already on the device,
and the numpy reference (`render_view`, one host core) on --numpy-views views.
"""

import argparse
import functools
import json
import time

import jax
import numpy as np
from timing import time_calls  # benchmarks/timing.py, beside this script

from fast3r_jax.config import RenderedDataConfig
from fast3r_jax.data import raycast, synthetic
from fast3r_jax.data.rendered import RenderedBatches
from fast3r_jax.sharding import make_mesh


def _pair(text: str) -> tuple[int, int]:
    a, b = text.split("x")
    return int(a), int(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buckets", nargs="+", type=_pair, default=[(2, 48), (6, 16), (12, 8), (24, 4)],
                        help="VIEWSxSAMPLES per batch")
    parser.add_argument("--resolutions", nargs="+", type=_pair, default=[(128, 96), (96, 128), (128, 64)],
                        help="WxH")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--numpy-views", type=int, default=24)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    mesh = make_mesh(-1, 1)
    rows = []
    for views, samples in args.buckets:
        for resolution in args.resolutions:
            cfg = RenderedDataConfig(buckets=((views, samples),), resolutions=(resolution,))
            batches = RenderedBatches(cfg, seed=0, mesh=mesh)
            end_to_end = time_calls(lambda: next(batches)[0], repeats=args.batches)[1]  # noqa: B023
            dataset, indices = batches.draw(0)
            scenes, K, c2w = zip(*(dataset.scene(i) for i in indices))
            placed = jax.device_put((raycast.pack_scenes(scenes), np.stack(K), np.stack(c2w)))
            render = jax.jit(functools.partial(raycast.render_batch, resolution=resolution))
            render_only = time_calls(lambda: render(*placed), repeats=args.batches)[1]  # noqa: B023
            images = views * samples
            rows.append({"views": views, "samples": samples, "resolution": f"{resolution[0]}x{resolution[1]}",
                         "images_per_s": images / end_to_end, "render_only_images_per_s": images / render_only})
            print(json.dumps(rows[-1]), flush=True)
    for resolution in args.resolutions:
        dataset = synthetic.SyntheticScenes(1, args.numpy_views, resolution)
        scene, K, c2w = dataset.scene(0)
        start = time.perf_counter()
        for v in range(args.numpy_views):
            synthetic.render_view(scene, K[v], c2w[v], resolution)
        rows.append({"numpy_resolution": f"{resolution[0]}x{resolution[1]}",
                     "numpy_images_per_s_one_core": args.numpy_views / (time.perf_counter() - start)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"device": jax.devices()[0].device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
              "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
